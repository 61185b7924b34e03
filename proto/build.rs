//! Compiles `schemas/*.proto` with protox (pure Rust, no system `protoc`) and generates
//! prost types into `OUT_DIR`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "common.proto",
        "client.proto",
        "bookie.proto",
        "metastore.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed=schemas/{f}");
    }
    let descriptors = protox::compile(files, ["schemas"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
