//! The capture connector: stores each message (channel, template, recipient, the
//! variables it would be rendered with) in the node's `captured` keyspace so
//! `chorusctl messages tail` shows it. Idempotent by key: re-delivery stores nothing new.

use crate::{Connector, DeliveryError};
use chorus_store::Store;
use chorus_types::Intent;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

/// One captured message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Captured {
    pub seq: u64,
    pub at_ms: i64,
    pub intent: Intent,
}

const SEQ_PREFIX: u8 = b's';
const KEY_PREFIX: u8 = b'k';

fn seq_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = SEQ_PREFIX;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn idem_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(KEY_PREFIX);
    k.extend_from_slice(key.as_bytes());
    k
}

pub struct CaptureConnector {
    store: Store,
    clock: Box<dyn Fn() -> i64 + Send + Sync>,
    next: Mutex<u64>,
}

impl CaptureConnector {
    pub fn new(store: Store, clock: Box<dyn Fn() -> i64 + Send + Sync>) -> Result<CaptureConnector, String> {
        let last = match store.captured().prefix([SEQ_PREFIX]).next_back() {
            Some(kv) => {
                let k = kv.key().map_err(|e| e.to_string())?;
                u64::from_be_bytes(k[1..9].try_into().map_err(|_| "corrupt captured key".to_string())?)
            }
            None => 0,
        };
        Ok(CaptureConnector { store, clock, next: Mutex::new(last + 1) })
    }

    fn store_once(&self, intent: &Intent) -> Result<String, DeliveryError> {
        let t = |e: chorus_store::StoreError| DeliveryError::Transient(e.to_string());
        let mut next = self.next.lock().expect("capture lock");
        if let Some(seq) = self.store.captured().get(idem_key(&intent.key)).map_err(|e| DeliveryError::Transient(e.to_string()))? {
            let seq = u64::from_be_bytes(seq[..8].try_into().map_err(|_| DeliveryError::Permanent("corrupt capture index".into()))?);
            return Ok(format!("already captured as #{seq}"));
        }
        let seq = *next;
        let msg = Captured { seq, at_ms: (self.clock)(), intent: intent.clone() };
        let mut b = self.store.batch();
        b.insert(self.store.captured(), seq_key(seq).to_vec(), chorus_types::encoding::encode(&msg));
        b.insert(self.store.captured(), idem_key(&intent.key), seq.to_be_bytes().to_vec());
        b.commit().map_err(|e| t(e.into()))?;
        *next += 1;
        Ok(format!("captured as #{seq}"))
    }
}

impl Connector for CaptureConnector {
    fn name(&self) -> &str {
        "capture"
    }

    fn deliver<'a>(&'a self, intent: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>> {
        Box::pin(async move {
            let detail = self.store_once(intent)?;
            // Durable before we say "delivered": a crash must not lose a sent message.
            self.store.flusher().flush().await.map_err(|e| DeliveryError::Transient(e.to_string()))?;
            Ok(detail)
        })
    }
}

/// Read captured messages with `seq > after`, oldest first, at most `limit`.
pub fn read_after(store: &Store, after: u64, limit: usize) -> Result<Vec<Captured>, String> {
    let mut out = Vec::new();
    let lo = seq_key(after.saturating_add(1));
    let hi = seq_key(u64::MAX);
    for kv in store.captured().range(lo..=hi) {
        if out.len() >= limit {
            break;
        }
        let (_, v) = kv.into_inner().map_err(|e| e.to_string())?;
        out.push(chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The last `n` captured messages, oldest first.
pub fn read_last(store: &Store, n: usize) -> Result<Vec<Captured>, String> {
    let mut out = Vec::new();
    for kv in store.captured().prefix([SEQ_PREFIX]).rev() {
        if out.len() >= n {
            break;
        }
        let (_, v) = kv.into_inner().map_err(|e| e.to_string())?;
        out.push(chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?);
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_types::{Category, CustomerId, JsonMap};

    fn intent(key: &str) -> Intent {
        Intent {
            key: key.into(),
            customer: CustomerId::new(1, 2),
            channel: "email".into(),
            template: "welcome".into(),
            category: Category::Transactional,
            to: "ada@example.com".into(),
            vars: JsonMap::new(),
            journey: String::new(),
            created_ms: 1,
            content: String::new(),
        }
    }

    #[tokio::test]
    async fn capture_is_idempotent_by_key_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Default::default()).unwrap();
            let c = CaptureConnector::new(store.clone(), Box::new(|| 42)).unwrap();
            c.deliver(&intent("k1")).await.unwrap();
            let again = c.deliver(&intent("k1")).await.unwrap();
            assert!(again.contains("already captured"), "{again}");
            c.deliver(&intent("k2")).await.unwrap();
            assert_eq!(read_last(&store, 10).unwrap().len(), 2);
        }
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let c = CaptureConnector::new(store.clone(), Box::new(|| 43)).unwrap();
        c.deliver(&intent("k1")).await.unwrap();
        c.deliver(&intent("k3")).await.unwrap();
        let all = read_after(&store, 0, 100).unwrap();
        assert_eq!(all.iter().map(|m| m.intent.key.as_str()).collect::<Vec<_>>(), vec!["k1", "k2", "k3"]);
        assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    struct Flaky(std::sync::atomic::AtomicU32);
    impl Connector for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn deliver<'a>(&'a self, _i: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>> {
            Box::pin(async move {
                let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n < 2 { Err(DeliveryError::Transient("503".into())) } else { Ok("ok".into()) }
            })
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_with_backoff() {
        let limits = crate::ConnectorLimits { backoff_initial: std::time::Duration::from_millis(1), ..Default::default() };
        let connectors = crate::Connectors::start(vec![("email".into(), std::sync::Arc::new(Flaky(Default::default())), limits)]).await.unwrap();
        let d = connectors.deliver(intent("k")).await;
        assert_eq!(d.status, chorus_types::DispatchStatus::Delivered);
        assert_eq!(d.attempts, 3);
        let d = connectors.deliver(Intent { channel: "sms".into(), ..intent("k2") }).await;
        assert_eq!(d.status, chorus_types::DispatchStatus::FailedPermanent);
        connectors.stop();
    }
}
