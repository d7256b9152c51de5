//! Function calls in the Realtime simulator: GA event shapes (checked
//! against the openai package's models when available),
//! `function_call_output` validation, undeclared tools.

mod common;

use common::{check_server_events_with_openai, connect, of_type, recv, send, types, until};
use serde_json::{Value, json};
use voxbridge_sim::realtime::{RealtimeSim, RealtimeSimConfig, SimNotice, SimReply};

fn cfg() -> RealtimeSimConfig {
    RealtimeSimConfig {
        first_delta_delay_ms: 10,
        speed: 40.0,
        replies: vec![
            SimReply::new("Thanks for calling, goodbye.", 600),
            SimReply::new("", 0),
            SimReply::new("Done.", 200),
        ],
        ..RealtimeSimConfig::default()
    }
    .with_tool_call(0, "end_call", json!({"reason": "completed"}))
    .with_tool_call(1, "lookup_order", json!({"order": "A-17", "verbose": true}))
}

fn session_with_tools(tools: &[&str]) -> Value {
    let tools: Vec<Value> = tools
        .iter()
        .map(|n| {
            json!({"type": "function", "name": n, "description": "test tool",
                "parameters": {"type": "object", "properties": {}}})
        })
        .collect();
    json!({"type": "session.update", "session": {
        "type": "realtime", "instructions": "Be brief.", "tools": tools,
        "audio": {"input": {"format": {"type": "audio/pcmu"}},
                  "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}}})
}

#[tokio::test]
async fn function_call_after_speech_then_output_then_next_reply() {
    let sim = RealtimeSim::start(cfg()).await.expect("start");
    let mut notices = sim.notices();
    let mut ws = connect(&format!("{}?model=gpt-realtime", sim.ws_url()), None)
        .await
        .expect("connect");
    let mut all = vec![recv(&mut ws, 2_000).await.expect("created")];
    send(&mut ws, session_with_tools(&["end_call", "lookup_order"])).await;
    all.extend(until(&mut ws, "session.updated").await);
    send(&mut ws, json!({"type": "response.create"})).await;
    let evs = until(&mut ws, "response.done").await;
    all.extend(evs.iter().cloned());

    // The message is finished before the function call item starts.
    let t = types(&evs);
    let msg_done = t
        .iter()
        .position(|x| x == "response.output_audio_transcript.done")
        .expect("transcript done");
    let fc_added = evs
        .iter()
        .position(|e| {
            e["type"] == "response.output_item.added" && e["item"]["type"] == "function_call"
        })
        .expect("function_call added");
    assert!(msg_done < fc_added, "{t:?}");

    let added = &evs[fc_added];
    let item = &added["item"];
    assert_eq!(added["output_index"], 1);
    assert_eq!(item["status"], "in_progress");
    assert_eq!(item["name"], "end_call");
    assert_eq!(item["arguments"], "");
    assert_eq!(item["object"], "realtime.item");
    let call_id = item["call_id"].as_str().expect("call_id").to_string();
    let item_id = item["id"].as_str().expect("id").to_string();
    assert!(call_id.starts_with("call_"), "{call_id}");
    let rid = added["response_id"].as_str().expect("response_id");

    let deltas = of_type(&evs, "response.function_call_arguments.delta");
    assert!(!deltas.is_empty());
    let joined: String = deltas
        .iter()
        .map(|d| {
            assert_eq!(d["call_id"], call_id.as_str());
            assert_eq!(d["item_id"], item_id.as_str());
            assert_eq!(d["response_id"], rid);
            assert_eq!(d["output_index"], 1);
            d["delta"].as_str().expect("delta").to_string()
        })
        .collect();
    let done = of_type(&evs, "response.function_call_arguments.done");
    assert_eq!(done.len(), 1);
    let done = done[0];
    assert_eq!(done["arguments"], joined.as_str());
    assert_eq!(done["name"], "end_call");
    assert_eq!(done["call_id"], call_id.as_str());
    assert_eq!(done["item_id"], item_id.as_str());
    assert_eq!(done["output_index"], 1);
    assert_eq!(done["response_id"], rid);
    let args: Value = serde_json::from_str(&joined).expect("arguments are JSON");
    assert_eq!(args, json!({"reason": "completed"}));

    let item_done: Vec<&Value> = of_type(&evs, "response.output_item.done")
        .into_iter()
        .filter(|e| e["item"]["type"] == "function_call")
        .collect();
    assert_eq!(item_done.len(), 1);
    assert_eq!(item_done[0]["item"]["status"], "completed");
    assert_eq!(item_done[0]["item"]["arguments"], joined.as_str());
    assert_eq!(item_done[0]["item"]["call_id"], call_id.as_str());

    let resp = &evs.last().expect("done")["response"];
    assert_eq!(resp["status"], "completed");
    let output = resp["output"].as_array().expect("output");
    assert_eq!(output.len(), 2, "{output:?}");
    assert_eq!(output[0]["type"], "message");
    assert_eq!(output[1]["type"], "function_call");
    assert_eq!(output[1]["call_id"], call_id.as_str());
    assert!(resp["usage"]["output_tokens"].as_u64().expect("usage") > 0);

    let calls = sim.function_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].call_id, call_id);
    assert_eq!(calls[0].name, "end_call");
    assert_eq!(calls[0].response_index, 0);
    assert_eq!(calls[0].sip_call_id, None);

    // An unknown call_id is refused like the real API.
    send(
        &mut ws,
        json!({"type": "conversation.item.create", "event_id": "c1", "item": {
            "type": "function_call_output", "call_id": "call_nope", "output": "{}"}}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["code"], "invalid_tool_call_id");
    assert_eq!(
        e["error"]["message"],
        "Tool call ID 'call_nope' not found in conversation."
    );
    assert_eq!(e["error"]["event_id"], "c1");
    all.push(e);

    // The right one is accepted, then response.create speaks the next reply.
    send(
        &mut ws,
        json!({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": "{\"ok\":true}"}}),
    )
    .await;
    let a = recv(&mut ws, 2_000).await.expect("added");
    assert_eq!(a["type"], "conversation.item.added");
    assert_eq!(a["item"]["type"], "function_call_output");
    assert_eq!(a["previous_item_id"], item_id.as_str());
    all.push(a);
    all.push(recv(&mut ws, 2_000).await.expect("item done"));
    let outs = sim.tool_outputs();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].call_id, call_id);
    assert_eq!(outs[0].output, "{\"ok\":true}");

    // Response 1 is a function call only (empty reply).
    send(&mut ws, json!({"type": "response.create"})).await;
    let evs = until(&mut ws, "response.done").await;
    all.extend(evs.iter().cloned());
    assert!(
        of_type(&evs, "response.output_audio_transcript.delta").is_empty(),
        "{:?}",
        types(&evs)
    );
    let resp = &evs.last().expect("done")["response"];
    let output = resp["output"].as_array().expect("output");
    assert_eq!(output.len(), 1, "{output:?}");
    assert_eq!(output[0]["type"], "function_call");
    assert_eq!(output[0]["name"], "lookup_order");
    let added = of_type(&evs, "response.output_item.added");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["output_index"], 0);
    let args: Value = serde_json::from_str(output[0]["arguments"].as_str().expect("args"))
        .expect("JSON arguments");
    assert_eq!(args, json!({"order": "A-17", "verbose": true}));

    let mut seen = Vec::new();
    while let Ok(n) = notices.try_recv() {
        match n {
            SimNotice::FunctionCall { name, .. } => seen.push(format!("call:{name}")),
            SimNotice::ToolOutput { .. } => seen.push("output".to_string()),
            _ => {}
        }
    }
    assert_eq!(seen, vec!["call:end_call", "output", "call:lookup_order"]);

    check_server_events_with_openai(&all, "tool-calls");
    sim.shutdown().await;
}

#[tokio::test]
async fn undeclared_tool_is_not_called_and_is_recorded() {
    let sim = RealtimeSim::start(cfg()).await.expect("start");
    let mut ws = connect(&sim.ws_url(), None).await.expect("connect");
    recv(&mut ws, 2_000).await.expect("created");
    send(&mut ws, session_with_tools(&["transfer_call"])).await;
    until(&mut ws, "session.updated").await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let evs = until(&mut ws, "response.done").await;
    let output = evs.last().expect("done")["response"]["output"]
        .as_array()
        .expect("output")
        .clone();
    assert_eq!(output.len(), 1);
    assert_eq!(output[0]["type"], "message");
    assert!(of_type(&evs, "response.function_call_arguments.done").is_empty());
    assert!(sim.function_calls().is_empty());
    let misses = sim.tool_call_misses();
    assert_eq!(misses.len(), 1);
    assert_eq!(misses[0].name, "end_call");
    assert_eq!(misses[0].response_index, 0);
    assert!(
        misses[0].reason.contains("transfer_call"),
        "{}",
        misses[0].reason
    );

    // tool_choice "none" also prevents the call.
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"type": "realtime",
            "tools": [{"type": "function", "name": "lookup_order"}], "tool_choice": "none"}}),
    )
    .await;
    until(&mut ws, "session.updated").await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let evs = until(&mut ws, "response.done").await;
    assert!(of_type(&evs, "response.function_call_arguments.done").is_empty());
    assert_eq!(sim.tool_call_misses().len(), 2);

    // A function tool needs a name.
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"type": "realtime",
            "tools": [{"type": "function", "description": "x"}]}}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["code"], "missing_required_parameter", "{e}");
    assert_eq!(e["error"]["param"], "session.tools[0].name");
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_arguments_can_be_scripted_and_cancel_drops_the_call() {
    let sim = RealtimeSim::start(
        RealtimeSimConfig {
            first_delta_delay_ms: 10,
            speed: 4.0,
            replies: vec![SimReply::new("One moment please while I check.", 3_000)],
            ..RealtimeSimConfig::default()
        }
        .with_tool_call(0, "lookup_order", json!("{not json"))
        .with_tool_call(1, "lookup_order", json!("{not json")),
    )
    .await
    .expect("start");
    let mut ws = connect(&sim.ws_url(), None).await.expect("connect");
    recv(&mut ws, 2_000).await.expect("created");
    send(&mut ws, session_with_tools(&["lookup_order"])).await;
    until(&mut ws, "session.updated").await;

    // Cancelled mid-speech: no function call.
    send(&mut ws, json!({"type": "response.create"})).await;
    until(&mut ws, "response.output_audio.delta").await;
    send(&mut ws, json!({"type": "response.cancel"})).await;
    let evs = until(&mut ws, "response.done").await;
    assert_eq!(evs.last().expect("done")["response"]["status"], "cancelled");
    assert!(of_type(&evs, "response.function_call_arguments.done").is_empty());

    // Completed: the arguments string is sent verbatim.
    send(&mut ws, json!({"type": "response.create"})).await;
    let evs = until(&mut ws, "response.done").await;
    let done = of_type(&evs, "response.function_call_arguments.done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["arguments"], "{not json");
    assert_eq!(sim.function_calls().len(), 1);
    assert_eq!(sim.function_calls()[0].response_index, 1);
    sim.shutdown().await;
}
