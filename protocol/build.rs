//! Compiles `proto/nakshatra.proto` with protox (a pure-Rust protobuf compiler, so no
//! `protoc` needs installing) and generates the prost types.

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["nakshatra.proto"], ["proto"]).expect("proto/nakshatra.proto compiles");
    prost_build::Config::new().compile_fds(descriptors).expect("prost generates the message types");
}
