//! Generates the `multinic.v1` gRPC code with a vendored `protoc`, so that a
//! build never needs a system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    #[allow(unsafe_code)]
    // SAFETY: the build script is single-threaded when this runs.
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    let protos = ["proto/multinic/v1/multinic.proto", "proto/multinic/v1/issuer.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().build_client(true).build_server(true).compile_protos(&protos, &["proto"])?;
    Ok(())
}
