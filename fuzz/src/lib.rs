//! Fuzzing every decoder that reads bytes from a peer or from a user's file.
//!
//! - [`targets`]: one function per decoder (frames, each protobuf message a node reads,
//!   hidden states, signed announcements, receipts, fraud proofs, GGUF headers and span
//!   plans, blob tables, manifests, verified blob streams), each checking properties of
//!   what it decodes: round trips, shapes, signatures.
//! - [`seeds`]: valid inputs for each, made by the real encoders.
//! - [`mutate`]: seeded byte-string mutations aimed at length fields.
//! - [`runner`]: runs a target over its corpus, its seeds and their mutations, catching
//!   panics, excess allocations ([`alloc`]) and slow inputs.
//!
//! Data flows corpus + seeds → pool → mutate → target → outcome (new outcomes feed the
//! pool) or finding (kept in `fuzz/corpus/<target>/`). The `nak-fuzz` binary runs any
//! number of inputs; the crate's test runs a bounded, seeded number in CI.

pub mod alloc;
pub mod mutate;
pub mod runner;
pub mod seeds;
pub mod targets;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// The corpus in the repository: `fuzz/corpus/<target>/`.
pub fn default_corpus() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Silences the panic message while the guard lives: a target's panic is caught and
/// reported as a finding, and thousands of them would bury the report. The previous hook
/// comes back when the guard is dropped.
pub fn quiet_panics() -> QuietPanics {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    QuietPanics(Some(previous))
}

/// A panic hook, as `std::panic::take_hook` gives it.
type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// See [`quiet_panics`].
pub struct QuietPanics(Option<PanicHook>);

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(previous) = self.0.take() {
            std::panic::set_hook(previous);
        }
    }
}
