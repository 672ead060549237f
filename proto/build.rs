//! Compiles the protos with protox (pure Rust; no `protoc` needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "chorus/v1/ingest.proto",
        "chorus/v1/profiles.proto",
        "chorus/v1/admin.proto",
        "chorus/v1/messages.proto",
        "chorus/v1/journeys.proto",
        "chorus/v1/audiences.proto",
        "chorus/v1/templates.proto",
        "chorus/internal/v1/node.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
