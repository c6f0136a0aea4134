//! Builds llama.cpp with Nakshatra's span patches.
//!
//! 1. `cargo metadata` on `upstream/Cargo.toml` makes cargo download the pristine
//!    `llama-cpp-sys-2` crate (it vendors llama.cpp) and tells us where it is.
//! 2. Its `llama.cpp/` tree is mirrored into `OUT_DIR`, with every `patches/*.patch`
//!    applied in memory; a file is only rewritten when its bytes change, so cmake
//!    rebuilds incrementally after a patch edit.
//! 3. cmake builds the static libraries; bindgen writes the bindings for `llama.h`
//!    and `gguf.h` (the same allow-list and style as upstream, so llama-cpp-2 compiles
//!    against them unchanged).
//!
//! The build logic is our own rather than upstream's `build.rs` because that script
//! cannot be called from another crate, and the part this project needs (static
//! CPU/CUDA/Metal/Vulkan/ROCm builds on Linux and macOS) is small.

use std::collections::BTreeMap;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const UPSTREAM_VERSION: &str = "0.1.161";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=patches");
    println!("cargo:rerun-if-changed=upstream/Cargo.toml");
    for var in ["LLAMA_LIB_PROFILE", "NAK_LLAMA_NATIVE", "CUDA_PATH", "CMAKE_BUILD_PARALLEL_LEVEL"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    refuse_unsupported_features();

    let upstream = locate_upstream(&manifest_dir);
    let patches = read_patches(&manifest_dir.join("patches"));
    let src = out_dir.join("llama.cpp");
    mirror_with_patches(&upstream.join("llama.cpp"), &src, &patches);

    build_with_cmake(&src);
    write_bindings(&manifest_dir, &src, &out_dir);
}

fn feature(name: &str) -> bool {
    env::var_os(format!("CARGO_FEATURE_{}", name.to_uppercase().replace('-', "_"))).is_some()
}

fn refuse_unsupported_features() {
    for name in ["common", "mtmd", "dynamic-link", "system-ggml", "opencl", "webgpu", "mkl"] {
        if feature(name) {
            panic!(
                "llama-patches: feature `{name}` of llama-cpp-sys-2 is not supported by the patched build; \
                 depend on llama-cpp-2 with default-features = false and pick among openmp, cuda, metal, vulkan, rocm"
            );
        }
    }
}

/// Path of the pristine `llama-cpp-sys-2` crate, downloaded by cargo itself.
fn locate_upstream(manifest_dir: &Path) -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let helper = manifest_dir.join("upstream/Cargo.toml");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&helper)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("llama-patches: could not run `cargo metadata`");
    if !output.status.success() {
        panic!(
            "llama-patches: `cargo metadata` on {} failed:\n{}",
            helper.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("llama-patches: cargo metadata printed invalid JSON");
    let packages = meta["packages"].as_array().expect("cargo metadata has packages");
    let pkg = packages
        .iter()
        .find(|p| p["name"] == "llama-cpp-sys-2" && p["version"] == UPSTREAM_VERSION)
        .unwrap_or_else(|| panic!("llama-patches: llama-cpp-sys-2 {UPSTREAM_VERSION} not in the helper's metadata"));
    let manifest = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path is a string"));
    manifest.parent().expect("a manifest has a parent directory").to_path_buf()
}

/// All patches, in file-name order, parsed into (relative path -> list of single-file patches).
fn read_patches(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .expect("llama-patches: patches/ is missing")
        .map(|e| e.expect("readable patches/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    names.sort();
    let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in names {
        let text = fs::read_to_string(&name).expect("patch files are UTF-8");
        for (path, body) in split_multi_file_patch(&text) {
            by_file.entry(path).or_default().push(body);
        }
    }
    by_file
}

/// Splits a `git diff` into one unified diff per file, each starting at its `---` line.
/// (diffy parses one file's diff at a time.)
fn split_multi_file_patch(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.split_inclusive('\n') {
        if line.starts_with("diff --git ") {
            out.extend(current.take());
            continue;
        }
        if let Some(rest) = line.strip_prefix("--- ") {
            if current.as_ref().is_none_or(|(_, body)| body.contains("\n@@")) {
                out.extend(current.take());
                let path = rest.trim().trim_start_matches("a/").to_string();
                current = Some((path, String::new()));
            }
        }
        if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
        }
    }
    out.extend(current);
    out
}

/// Mirrors `from` into `to`, applying patches to the files they name; only changed files are written.
fn mirror_with_patches(from: &Path, to: &Path, patches: &BTreeMap<String, Vec<String>>) {
    let mut applied = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = from.join(&rel);
        fs::create_dir_all(to.join(&rel)).expect("llama-patches: cannot create build directory");
        for entry in fs::read_dir(&dir).expect("readable upstream directory") {
            let entry = entry.expect("readable upstream entry");
            let rel_child = rel.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                stack.push(rel_child);
                continue;
            }
            let key = rel_child.to_string_lossy().replace('\\', "/");
            let mut bytes = fs::read(entry.path()).expect("readable upstream file");
            if let Some(file_patches) = patches.get(&key) {
                let mut text = String::from_utf8(bytes).expect("patched files are UTF-8");
                for body in file_patches {
                    let patch = diffy::Patch::from_str(body)
                        .unwrap_or_else(|e| panic!("llama-patches: bad patch for {key}: {e}"));
                    text = diffy::apply(&text, &patch)
                        .unwrap_or_else(|e| panic!("llama-patches: patch for {key} does not apply: {e}"));
                }
                bytes = text.into_bytes();
                applied += 1;
            }
            let dest = to.join(&rel_child);
            if fs::read(&dest).ok().as_deref() != Some(bytes.as_slice()) {
                fs::write(&dest, &bytes).expect("llama-patches: cannot write build source");
            }
        }
    }
    assert_eq!(applied, patches.len(), "llama-patches: a patch names a file that upstream does not have");
}

fn on_off(b: bool) -> &'static str {
    if b {
        "ON"
    } else {
        "OFF"
    }
}

fn build_with_cmake(src: &Path) {
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let apple = target.contains("apple");
    let profile = env::var("LLAMA_LIB_PROFILE").unwrap_or_else(|_| "Release".to_string());
    // Native code by default (this machine is where the node runs); NAK_LLAMA_NATIVE=0 for portable builds.
    let native = env::var("NAK_LLAMA_NATIVE").map(|v| v != "0").unwrap_or(true);

    let mut cfg = cmake::Config::new(src);
    cfg.profile(&profile)
        .define("BUILD_SHARED_LIBS", "OFF")
        .define("LLAMA_BUILD_COMMON", "OFF")
        .define("LLAMA_BUILD_TESTS", "OFF")
        .define("LLAMA_BUILD_TOOLS", "OFF")
        .define("LLAMA_BUILD_EXAMPLES", "OFF")
        .define("LLAMA_BUILD_SERVER", "OFF")
        .define("LLAMA_BUILD_APP", "OFF")
        .define("LLAMA_OPENSSL", "OFF")
        .define("LLAMA_CURL", "OFF")
        .define("GGML_NATIVE", on_off(native))
        .define("GGML_OPENMP", on_off(feature("openmp")))
        .define("GGML_CUDA", on_off(feature("cuda")))
        .define("GGML_CUDA_NO_VMM", on_off(feature("cuda-no-vmm")))
        .define("GGML_VULKAN", on_off(feature("vulkan")))
        .define("GGML_HIP", on_off(feature("rocm")))
        .define("GGML_METAL", on_off(feature("metal")))
        .define("GGML_BLAS", "OFF");
    if feature("metal") {
        cfg.define("GGML_METAL_EMBED_LIBRARY", "ON");
    }
    if native && target.starts_with("x86_64") {
        // ggml's AMX kernels stopped the process with SIGILL (at `tileloadd`) on a VM whose
        // CPU reports AMX, at the first prompt of some dozens of tokens. Explicit ISA flags
        // override those -march=native implies.
        for flag in ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"] {
            cfg.cflag(flag).cxxflag(flag);
        }
    }
    let dst = cfg.build();

    for lib_dir in ["lib", "lib64"] {
        println!("cargo:rustc-link-search=native={}", dst.join(lib_dir).display());
    }
    let mut libs = vec!["llama", "ggml", "ggml-base", "ggml-cpu"];
    if feature("cuda") {
        libs.push("ggml-cuda");
    }
    if feature("vulkan") {
        libs.push("ggml-vulkan");
    }
    if feature("rocm") {
        libs.push("ggml-hip");
    }
    if feature("metal") {
        libs.extend(["ggml-metal", "ggml-blas"]);
    }
    for lib in libs {
        println!("cargo:rustc-link-lib=static={lib}");
    }

    if feature("cuda") {
        let cuda = env::var("CUDA_PATH").unwrap_or_else(|_| "/usr/local/cuda".to_string());
        for dir in ["lib64", "lib64/stubs", "targets/x86_64-linux/lib", "targets/x86_64-linux/lib/stubs"] {
            println!("cargo:rustc-link-search=native={cuda}/{dir}");
        }
        for lib in ["cudart", "cublas", "cublasLt", "cuda"] {
            println!("cargo:rustc-link-lib={lib}");
        }
    }
    if feature("vulkan") {
        println!("cargo:rustc-link-lib=vulkan");
    }
    if feature("rocm") {
        let rocm = env::var("ROCM_PATH").unwrap_or_else(|_| "/opt/rocm".to_string());
        println!("cargo:rustc-link-search=native={rocm}/lib");
        for lib in ["amdhip64", "rocblas", "hipblas"] {
            println!("cargo:rustc-link-lib={lib}");
        }
    }
    if apple {
        println!("cargo:rustc-link-lib=c++");
        for fw in ["Foundation", "Accelerate", "Metal", "MetalKit"] {
            println!("cargo:rustc-link-lib=framework={fw}");
        }
    } else {
        println!("cargo:rustc-link-lib=stdc++");
    }
    if feature("openmp") {
        println!("cargo:rustc-link-lib={}", if apple { "omp" } else { "gomp" });
    }
}

fn write_bindings(manifest_dir: &Path, src: &Path, out_dir: &Path) {
    let bindings = bindgen::Builder::default()
        .header(manifest_dir.join("wrapper.h").to_string_lossy())
        .clang_arg(format!("-I{}", src.join("include").display()))
        .clang_arg(format!("-I{}", src.join("ggml/include").display()))
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .derive_partialeq(true)
        .allowlist_item("ggml_.*")
        .allowlist_item("gguf_.*")
        .allowlist_item("llama_.*")
        .allowlist_recursively(false)
        .raw_line("type FILE = ::std::os::raw::c_void;")
        .prepend_enum_name(false)
        .generate()
        .expect("llama-patches: bindgen failed (is libclang installed?)");
    bindings.write_to_file(out_dir.join("bindings.rs")).expect("llama-patches: cannot write bindings.rs");
}
