//! Bindings generated from `wit/twin.wit`, used by the export macros.

/// The `model` world.
pub mod model {
    wit_bindgen::generate!({
        path: "../wit",
        world: "model",
        pub_export_macro: true,
        export_macro_name: "export_model_world",
        default_bindings_module: "wasmtwin_sdk::bindings::model",
        runtime_path: "wasmtwin_sdk::__private::wit_bindgen::rt",
    });
}

/// The `adapter` world. Shares the types and imports of the model world.
pub mod adapter {
    wit_bindgen::generate!({
        path: "../wit",
        world: "adapter",
        pub_export_macro: true,
        export_macro_name: "export_adapter_world",
        default_bindings_module: "wasmtwin_sdk::bindings::adapter",
        runtime_path: "wasmtwin_sdk::__private::wit_bindgen::rt",
        with: {
            "wasmtwin:twin/types@0.2.0": crate::bindings::model::wasmtwin::twin::types,
            "wasmtwin:twin/log@0.2.0": crate::bindings::model::wasmtwin::twin::log,
            "wasmtwin:twin/clock@0.2.0": crate::bindings::model::wasmtwin::twin::clock,
        },
    });
}
