//! Host-side bindings generated from `wit/twin.wit`.

/// The `model` world.
pub mod model {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "model",
        // Exports run on fibers, so a long call yields to the scheduler.
        exports: { default: async },
    });
}

/// The `adapter` world; shares its types and imports with the model world.
pub mod adapter {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "adapter",
        exports: { default: async },
        with: {
            "wasmtwin:twin/types": super::model::wasmtwin::twin::types,
            "wasmtwin:twin/log": super::model::wasmtwin::twin::log,
            "wasmtwin:twin/clock": super::model::wasmtwin::twin::clock,
        },
    });
}

pub use model::wasmtwin::twin::types;
