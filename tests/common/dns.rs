//! A small authoritative DNS server on 127.0.0.1 (UDP) for the tests:
//! answers A/AAAA from a table that a test changes while it runs, and can
//! answer NXDOMAIN, SERVFAIL, or nothing at all.
#![allow(unreachable_pub)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// How the server answers for one name.
#[derive(Clone, Debug)]
pub enum Answer {
    /// These addresses (A for IPv4, AAAA for IPv6), with this TTL.
    Records(Vec<IpAddr>, u32),
    /// The name does not exist.
    NxDomain,
    /// Server failure.
    ServFail,
    /// No answer at all (a dead or overloaded resolver).
    Silent,
}

/// A running server; stops with the test's runtime.
pub struct FakeDns {
    pub address: SocketAddr,
    zone: Arc<Mutex<HashMap<String, Answer>>>,
    queries: Arc<AtomicUsize>,
}

impl FakeDns {
    /// Starts a server on an OS-picked port. Unknown names get NXDOMAIN.
    pub async fn start() -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let zone: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let (table, count) = (Arc::clone(&zone), Arc::clone(&queries));
        tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buffer).await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let Some(reply) = answer(&buffer[..n], &table) else {
                    continue;
                };
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        FakeDns {
            address,
            zone,
            queries,
        }
    }

    /// Sets how `name` (without the trailing dot) is answered from now on.
    pub fn set(&self, name: &str, answer: Answer) {
        self.zone
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), answer);
    }

    /// Queries received so far (answered or not).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The reply to one query, or None to stay silent (also for garbage).
fn answer(query: &[u8], zone: &Mutex<HashMap<String, Answer>>) -> Option<Vec<u8>> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    query.get(..question_end)?;
    let name = labels.join(".");
    let found = zone.lock().unwrap().get(&name).cloned();
    let (rcode, records, ttl) = match found.unwrap_or(Answer::NxDomain) {
        Answer::Silent => return None,
        Answer::NxDomain => (3u8, vec![], 0),
        Answer::ServFail => (2u8, vec![], 0),
        Answer::Records(addresses, ttl) => {
            let wanted = addresses
                .into_iter()
                .filter(|a| match a {
                    IpAddr::V4(_) => qtype == 1,
                    IpAddr::V6(_) => qtype == 28,
                })
                .collect();
            (0u8, wanted, ttl)
        }
    };
    let mut reply = Vec::with_capacity(question_end + records.len() * 28);
    reply.extend_from_slice(&query[..2]); // id
                                          // QR, the query's opcode and RD; AA, RA, and the rcode.
    reply.push(0x80 | (query[2] & 0x79) | 0x04);
    reply.push(0x80 | rcode);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&u16::try_from(records.len()).unwrap().to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
    reply.extend_from_slice(&query[12..question_end]);
    for address in records {
        reply.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        let (kind, data) = match address {
            IpAddr::V4(v4) => (1u16, v4.octets().to_vec()),
            IpAddr::V6(v6) => (28u16, v6.octets().to_vec()),
        };
        reply.extend_from_slice(&kind.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes()); // IN
        reply.extend_from_slice(&ttl.to_be_bytes());
        reply.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        reply.extend_from_slice(&data);
    }
    Some(reply)
}
