//! End-to-end tests over real loopback sockets: the voxbridge server, the
//! Realtime simulator as the model, the Twilio caller emulator as the phone.

mod agents;
mod call;
mod campaign;
mod cli;
mod cluster;
mod crash;
mod helpers;
mod loadtest;
mod rest;
mod robustness;
mod sip;
mod tools;
mod two_nodes;
