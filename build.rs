//! Compiles csrc/host_tensor.cpp and csrc/torch_state.cpp (what torch-sys lacks) against the libtorch
//! that torch-sys links (the installed torch's with LIBTORCH_USE_PYTORCH=1, as the Makefile sets it;
//! else $LIBTORCH), with its C++ ABI.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=csrc/host_tensor.cpp");
    println!("cargo:rerun-if-changed=csrc/torch_state.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let (includes, abi) = if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
            "python"
        } else {
            "python3"
        };
        let out = Command::new(python)
            .args(["-c", "import torch, torch.utils.cpp_extension as c; print(int(torch._C._GLIBCXX_USE_CXX11_ABI)); print(*c.include_paths(), sep='\\n')"])
            .output()
            .expect("running python to find torch's headers");
        assert!(
            out.status.success(),
            "python could not import torch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8 paths");
        let mut lines = text.lines();
        let abi = lines.next().expect("the ABI line").to_string();
        (lines.map(PathBuf::from).collect::<Vec<_>>(), abi)
    } else {
        let root = PathBuf::from(std::env::var("LIBTORCH").expect("LIBTORCH_USE_PYTORCH=1 or LIBTORCH must be set"));
        let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
        (
            vec![root.join("include"), root.join("include/torch/csrc/api/include")],
            abi,
        )
    };
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .includes(&includes)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .file("csrc/host_tensor.cpp")
        .file("csrc/torch_state.cpp")
        .compile("fastcifar_host");
}
