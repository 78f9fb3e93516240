//! A model built against the first version of the contract,
//! `wasmtwin:twin@0.1.0` (its WIT is kept in `wit/`), as components built
//! before 0.2.0 are: hosts must refuse it with a message that says to
//! rebuild, not with a list of missing functions. It does nothing else.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "wit", world: "model" });

    use exports::wasmtwin::twin::model_api::Guest;
    use wasmtwin::twin::types::{ActionOutcome, Description, Effects, Update};

    struct Legacy;

    impl Guest for Legacy {
        fn init(_config: String) -> Result<(), String> {
            Ok(())
        }

        fn reconfigure(_config: String) -> Result<(), String> {
            Ok(())
        }

        fn on_update(_update: Update) -> Result<Effects, String> {
            Ok(Effects {
                changes: Vec::new(),
                events: Vec::new(),
            })
        }

        fn on_action(_name: String, _input: String) -> Result<ActionOutcome, String> {
            Err("legacy has no actions".into())
        }

        fn snapshot() -> Result<Vec<u8>, String> {
            Ok(Vec::new())
        }

        fn restore(_state: Vec<u8>, _state_version: u32) -> Result<(), String> {
            Ok(())
        }

        fn describe() -> Description {
            Description {
                name: "legacy".into(),
                version: "0.1.0".into(),
                state_version: 1,
                properties: Vec::new(),
                actions: Vec::new(),
                events: Vec::new(),
            }
        }
    }

    export!(Legacy);
}
