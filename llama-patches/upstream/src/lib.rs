// Empty: this crate only pins the upstream source for llama-patches/build.rs.
