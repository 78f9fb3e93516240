//! A twin of an industrial electric motor. The device reports
//! `temperature` (°C), `vibration` (RMS velocity, mm/s), `rpm` and
//! `running`; the twin derives alarms from configurable thresholds (ISO
//! 10816-style vibration zones and a winding temperature limit) and offers
//! `stop`, `start` and `set_speed` actions that become device commands.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wasmtwin_sdk::{ActionInfo, Effects, Error, EventInfo, Model, Outcome, PropertyInfo, Update};

/// Alarm thresholds, all optional in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Winding temperature above which the motor is overheating, °C.
    pub temperature_alarm: f64,
    /// Vibration above which the motor needs attention, mm/s.
    pub vibration_warning: f64,
    /// Vibration above which the motor must stop, mm/s.
    pub vibration_alarm: f64,
    /// Highest speed `set_speed` accepts, rpm.
    pub max_rpm: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            temperature_alarm: 90.0,
            vibration_warning: 4.5,
            vibration_alarm: 7.1,
            max_rpm: 3000.0,
        }
    }
}

impl Config {
    fn checked(self) -> Result<Self, Error> {
        if self.vibration_warning > self.vibration_alarm {
            return Err(Error::new(format!(
                "vibration_warning ({}) must not exceed vibration_alarm ({})",
                self.vibration_warning, self.vibration_alarm
            )));
        }
        if self.max_rpm <= 0.0 {
            return Err(Error::new("max_rpm must be positive"));
        }
        Ok(self)
    }
}

/// The motor's health, worst condition first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Within all thresholds.
    Ok,
    /// Vibration in the warning zone.
    Warning,
    /// Overheating or vibrating beyond the alarm threshold.
    Alarm,
}

/// The twin's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    config: Config,
    temperature: Option<f64>,
    vibration: Option<f64>,
    rpm: Option<f64>,
    running: Option<bool>,
    health: Health,
    alarms_raised: u64,
}

impl Machine {
    fn assess(&self) -> Health {
        let hot = self
            .temperature
            .is_some_and(|t| t > self.config.temperature_alarm);
        let shaking = self.vibration.unwrap_or(0.0);
        if hot || shaking > self.config.vibration_alarm {
            Health::Alarm
        } else if shaking > self.config.vibration_warning {
            Health::Warning
        } else {
            Health::Ok
        }
    }

    fn number(update: &Update) -> Result<f64, Error> {
        update.value.as_f64().ok_or_else(|| {
            Error::new(format!(
                "{} must be a number, got {}",
                update.property, update.value
            ))
        })
    }
}

impl Model for Machine {
    type Config = Config;
    const NAME: &'static str = "machine";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const PROPERTIES: &'static [PropertyInfo] = &[
        PropertyInfo::new("temperature", "number", "Winding temperature").unit("Cel"),
        PropertyInfo::new("vibration", "number", "RMS vibration velocity").unit("mm/s"),
        PropertyInfo::new("rpm", "number", "Shaft speed").unit("1/min"),
        PropertyInfo::new("running", "boolean", "Whether the motor is turning"),
        PropertyInfo::new(
            "health",
            "string",
            "ok, warning or alarm, from the thresholds",
        ),
        PropertyInfo::new("alarms", "integer", "Alarms raised since the last reset"),
    ];
    const ACTIONS: &'static [ActionInfo] = &[
        ActionInfo::new("stop", "Stop the motor")
            .input(
                r#"{"type": ["object", "null"], "properties": {"reason": {"type": "string"}}}"#,
            )
            .output(ACCEPTED),
        ActionInfo::new("start", "Start the motor (refused while in alarm)").output(ACCEPTED),
        ActionInfo::new("set_speed", "Set the target speed")
            .input(
                r#"{"type": "object", "properties": {"rpm": {"type": "number", "minimum": 0, "unit": "1/min"}}, "required": ["rpm"]}"#,
            )
            .output(ACCEPTED),
        ActionInfo::new("reset", "Clear the count of alarms raised")
            .output(r#"{"type": "object", "properties": {"cleared": {"type": "integer"}}}"#),
    ];
    const EVENTS: &'static [EventInfo] = &[EventInfo {
        name: "health_changed",
        description: "The motor's health moved between ok, warning and alarm",
    }];

    fn init(config: Config) -> Result<Self, Error> {
        Ok(Machine {
            config: config.checked()?,
            temperature: None,
            vibration: None,
            rpm: None,
            running: None,
            health: Health::Ok,
            alarms_raised: 0,
        })
    }

    fn reconfigure(&mut self, config: Config) -> Result<(), Error> {
        self.config = config.checked()?;
        Ok(())
    }

    fn on_update(&mut self, update: &Update, effects: &mut Effects) -> Result<(), Error> {
        match update.property.as_str() {
            "temperature" => self.temperature = Some(Self::number(update)?),
            "vibration" => self.vibration = Some(Self::number(update)?),
            "rpm" => self.rpm = Some(Self::number(update)?),
            "running" => {
                let running = update.value.as_bool().ok_or_else(|| {
                    Error::new(format!("running must be a boolean, got {}", update.value))
                })?;
                self.running = Some(running);
            }
            // Devices report more than this model needs; ignore the rest.
            _ => return Ok(()),
        }
        effects.set(update.property.clone(), update.value.clone());
        let health = self.assess();
        if health != self.health {
            if health == Health::Alarm {
                self.alarms_raised += 1;
                effects.set("alarms", self.alarms_raised);
            }
            effects.emit(
                "health_changed",
                json!({ "from": self.health, "to": health, "cause": update.property, "seq": update.seq }),
            );
            self.health = health;
            effects.set("health", json!(health));
        }
        Ok(())
    }

    fn on_action(
        &mut self,
        name: &str,
        input: &Value,
        outcome: &mut Outcome,
    ) -> Result<Value, Error> {
        match name {
            "stop" => {
                let reason = input
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("operator");
                outcome.send("stop", json!({ "reason": reason }));
                Ok(json!({ "accepted": true }))
            }
            "start" => {
                if self.health == Health::Alarm {
                    return Err(Error::new("refusing to start while the motor is in alarm"));
                }
                outcome.send("start", json!({}));
                Ok(json!({ "accepted": true }))
            }
            "set_speed" => {
                let rpm = input
                    .get("rpm")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| Error::new("set_speed needs {\"rpm\": number}"))?;
                if !(0.0..=self.config.max_rpm).contains(&rpm) {
                    return Err(Error::new(format!(
                        "rpm must be between 0 and {}",
                        self.config.max_rpm
                    )));
                }
                outcome.send("set_speed", json!({ "rpm": rpm }));
                Ok(json!({ "accepted": true, "rpm": rpm }))
            }
            "reset" => {
                let cleared = std::mem::take(&mut self.alarms_raised);
                outcome.set("alarms", 0);
                Ok(json!({ "cleared": cleared }))
            }
            other => Err(Error::new(format!("machine has no action `{other}`"))),
        }
    }
}

/// The reply of the actions that command the motor.
const ACCEPTED: &str = r#"{"type": "object", "properties": {"accepted": {"type": "boolean"}}}"#;

wasmtwin_sdk::export_model!(Machine);

#[cfg(test)]
mod tests {
    use super::*;

    fn update(seq: u64, property: &str, value: Value) -> Update {
        Update {
            seq,
            ts_ms: seq,
            property: property.into(),
            value,
        }
    }

    #[test]
    fn raises_and_clears_alarms() {
        let mut m = Machine::init(Config::default()).unwrap();
        let mut fx = Effects::default();
        m.on_update(&update(1, "vibration", json!(5.0)), &mut fx)
            .unwrap();
        assert_eq!(m.health, Health::Warning);
        m.on_update(&update(2, "temperature", json!(95.0)), &mut fx)
            .unwrap();
        assert_eq!(m.health, Health::Alarm);
        m.on_update(&update(3, "temperature", json!(60.0)), &mut fx)
            .unwrap();
        assert_eq!(m.health, Health::Warning);
        assert_eq!(fx.events().len(), 3);
        assert_eq!(m.alarms_raised, 1);
    }

    #[test]
    fn refuses_bad_values_without_changing_state() {
        let mut m = Machine::init(Config::default()).unwrap();
        let before = m.clone();
        assert!(
            m.on_update(
                &update(1, "temperature", json!("hot")),
                &mut Effects::default()
            )
            .is_err()
        );
        assert_eq!(m, before);
    }

    #[test]
    fn actions_become_commands() {
        let mut m = Machine::init(Config::default()).unwrap();
        let mut out = Outcome::default();
        m.on_action("stop", &json!({"reason": "maintenance"}), &mut out)
            .unwrap();
        assert_eq!(out.commands()[0].name, "stop");
        assert!(
            m.on_action("set_speed", &json!({"rpm": 9000}), &mut out)
                .is_err()
        );
        assert!(m.on_action("fly", &Value::Null, &mut out).is_err());
        assert_eq!(out.commands().len(), 1);
    }
}
