//! The node's clock: the system clock, or a manual clock for tests and time travel
//! (`--clock manual`, moved by `chorusctl clock`). Never goes backwards. The decision
//! core never reads it: proposers stamp it on log entries.

use chorus_store::Store;
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockMode {
    System,
    Manual,
}

impl ClockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClockMode::System => "system",
            ClockMode::Manual => "manual",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("the clock is the system clock; start the node with --clock manual to move it")]
    NotManual,
    #[error("the clock cannot go backwards: now is {now_ms}, asked for {asked_ms}")]
    Backwards { now_ms: i64, asked_ms: i64 },
    #[error("cannot persist the manual clock: {0}")]
    Store(String),
}

const MANUAL_KEY: &[u8] = b"clock.manual_ms";

pub struct Clock {
    mode: ClockMode,
    /// Last value handed out (monotonic), or the manual time.
    last: Mutex<i64>,
    store: Option<Store>,
}

fn system_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Clock {
    pub fn system() -> Clock {
        Clock { mode: ClockMode::System, last: Mutex::new(0), store: None }
    }

    /// A manual clock persisted in the node store; starts at the stored value, or at
    /// the system time on first use.
    pub fn manual(store: Store) -> Result<Clock, ClockError> {
        let start = match store.node_meta().get(MANUAL_KEY).map_err(|e| ClockError::Store(e.to_string()))? {
            Some(v) if v.len() == 8 => i64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
            _ => system_ms(),
        };
        let c = Clock { mode: ClockMode::Manual, last: Mutex::new(start), store: Some(store) };
        c.persist(start)?;
        Ok(c)
    }

    pub fn mode(&self) -> ClockMode {
        self.mode
    }

    /// Unix milliseconds; monotonic.
    pub fn now_ms(&self) -> i64 {
        let mut last = self.last.lock().expect("clock lock");
        if self.mode == ClockMode::System {
            *last = (*last).max(system_ms());
        }
        *last
    }

    fn persist(&self, ms: i64) -> Result<(), ClockError> {
        if let Some(store) = &self.store {
            store.node_meta().insert(MANUAL_KEY, ms.to_le_bytes().to_vec()).map_err(|e| ClockError::Store(e.to_string()))?;
            store.sync().map_err(|e| ClockError::Store(e.to_string()))?;
        }
        Ok(())
    }

    pub fn advance(&self, by_ms: i64) -> Result<i64, ClockError> {
        let now = self.now_ms();
        self.set(now.saturating_add(by_ms))
    }

    pub fn set(&self, to_ms: i64) -> Result<i64, ClockError> {
        if self.mode != ClockMode::Manual {
            return Err(ClockError::NotManual);
        }
        let mut last = self.last.lock().expect("clock lock");
        if to_ms < *last {
            return Err(ClockError::Backwards { now_ms: *last, asked_ms: to_ms });
        }
        self.persist(to_ms)?;
        *last = to_ms;
        Ok(to_ms)
    }
}
