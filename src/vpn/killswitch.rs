//! The kill switch: one nftables table owned by the gate (`inet miauflix_gate`), built with
//! the `nftables` crate's JSON model and applied with `nft -j` in one atomic transaction.
//!
//! It is installed before the tunnel comes up, re-applied (never removed) on VPN restarts,
//! server rotation and gate restarts, and it survives a crash of the gate because nothing
//! removes it on exit. Only `vpn.enabled = false`, `vpn.killswitch.enabled = false` or
//! `miauflix-gate vpn disable` remove it.
//!
//! For the traffic in scope the `guard` chain accepts only: DNS to `vpn.dns` through the
//! tunnel (all other DNS is dropped first, loopback resolvers included for the `uid` scope,
//! whose resolver would forward outside the scope), loopback, the tunnel interface, the
//! tunnel's own UDP to the configured endpoints, and `allow_lan`. Everything else, IPv6
//! included (the table is `inet`), is counted and dropped.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use nftables::batch::Batch;
use nftables::expr::{CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Counter, JumpTarget, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::config::{KillswitchScope, VpnConfig};

/// The gate's table.
pub const TABLE: &str = "miauflix_gate";
const GUARD: &str = "guard";
const OUTPUT: &str = "output";

/// What is in the kernel now.
#[derive(Debug, Clone, Default)]
pub struct Installed {
    pub present: bool,
    pub rules: u32,
    /// Packets dropped by the final rule since the table was (re)built.
    pub dropped_packets: u64,
}

fn m(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::EQ })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: Cow::Borrowed(protocol),
        field: Cow::Borrowed(name),
    })))
}

fn s(v: impl ToString) -> Expression<'static> {
    Expression::String(Cow::Owned(v.to_string()))
}

fn set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(items.into_iter().map(SetItem::Element).collect()))
}

fn prefix(net: &ipnet::IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(net.network())),
        len: net.prefix_len() as u32,
    }))
}

fn daddr(ip: &IpAddr) -> Expression<'static> {
    if ip.is_ipv4() { field("ip", "daddr") } else { field("ip6", "daddr") }
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

/// The whole table as one nft transaction: `add table` (so the delete below cannot fail),
/// `delete table`, then the new table, chains and rules. Applied atomically, so there is no
/// moment without the kill switch when it is rebuilt.
pub fn ruleset(cfg: &VpnConfig, endpoints: &[SocketAddr]) -> Nftables<'static> {
    let fam = NfFamily::INet;
    let table = || Table { family: fam, name: Cow::Borrowed(TABLE), handle: None };
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.add(NfListObject::Table(table()));
    batch.add(NfListObject::Chain(Chain {
        family: fam,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(OUTPUT),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Output),
        prio: Some(0),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }));
    batch.add(NfListObject::Chain(Chain {
        family: fam,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(GUARD),
        ..Default::default()
    }));
    for expr in rules(cfg, endpoints) {
        let chain = if matches!(expr.last(), Some(Statement::Jump(_))) { OUTPUT } else { GUARD };
        batch.add(NfListObject::Rule(Rule {
            family: fam,
            table: Cow::Borrowed(TABLE),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(expr),
            handle: None,
            index: None,
            comment: None,
        }));
    }
    batch.to_nftables()
}

/// The rules: the jump into `guard` for the traffic in scope (in `output`), then `guard`.
fn rules(cfg: &VpnConfig, endpoints: &[SocketAddr]) -> Vec<Vec<Statement<'static>>> {
    let ks = &cfg.killswitch;
    let wg = cfg.interface.clone();
    let jump = Statement::Jump(JumpTarget { target: Cow::Borrowed(GUARD) });
    let mut out = Vec::new();
    match ks.scope {
        KillswitchScope::All => out.push(vec![jump]),
        _ => {
            let uids = ks.uids.iter().map(|u| Expression::Number(*u)).collect();
            out.push(vec![m(meta(MetaKey::Skuid), set(uids)), jump]);
        }
    }
    if ks.scope == KillswitchScope::All {
        // Answers to connections that came in (the gate's own listeners) may leave.
        out.push(vec![
            m(
                Expression::Named(NamedExpression::CT(CT { key: Cow::Borrowed("direction"), family: None, dir: None })),
                s("reply"),
            ),
            accept(),
        ]);
    }
    // DNS: only to vpn.dns, only through the tunnel.
    let l4 = || m(meta(MetaKey::L4proto), set(vec![s("tcp"), s("udp")]));
    let dport53 = || m(field("th", "dport"), Expression::Number(53));
    for dns in &cfg.dns {
        out.push(vec![l4(), dport53(), m(meta(MetaKey::Oifname), s(&wg)), m(daddr(dns), s(dns)), accept()]);
    }
    if ks.scope == KillswitchScope::All {
        // Everything is in scope, the local resolver's own upstream queries too.
        out.push(vec![l4(), dport53(), m(meta(MetaKey::Oifname), s("lo")), accept()]);
    }
    out.push(vec![l4(), dport53(), Statement::Counter(Counter::Anonymous(None)), Statement::Drop(None)]);
    out.push(vec![m(meta(MetaKey::Oifname), s("lo")), accept()]);
    out.push(vec![m(meta(MetaKey::Oifname), s(&wg)), accept()]);
    for ep in endpoints {
        out.push(vec![
            m(daddr(&ep.ip()), s(ep.ip())),
            m(field("udp", "dport"), Expression::Number(u32::from(ep.port()))),
            accept(),
        ]);
    }
    for net in &ks.allow_lan {
        out.push(vec![m(daddr(&net.addr()), prefix(net)), accept()]);
    }
    out.push(vec![Statement::Counter(Counter::Anonymous(None)), Statement::Drop(None)]);
    out
}

/// Why an `nft` call failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` ran and refused: the first line it printed.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Output(#[from] std::string::FromUtf8Error),
    #[error("nft is not usable: {0}")]
    Unusable(#[source] Box<NftError>),
    #[error("nft refused the kill switch: {0}")]
    Install(#[source] nftables::helper::NftablesError),
    #[error("{0}")]
    Remove(#[source] nftables::helper::NftablesError),
}

/// `nft -j <args>` → its JSON output.
async fn nft_json(args: &[&str]) -> Result<String, NftError> {
    let out = tokio::process::Command::new("nft")
        .arg("-j")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(NftError::Spawn)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(NftError::Refused(err.lines().next().unwrap_or("nft failed").to_string()));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Whether `nft` runs and may read the ruleset (so also whether we hold CAP_NET_ADMIN).
pub async fn available() -> Result<(), NftError> {
    nft_json(&["list", "tables"]).await.map(|_| ()).map_err(|e| NftError::Unusable(Box::new(e)))
}

/// Applies [`ruleset`].
pub async fn install(cfg: &VpnConfig, endpoints: &[SocketAddr]) -> Result<(), NftError> {
    let doc = ruleset(cfg, endpoints);
    nftables::helper::apply_ruleset_async(&doc).await.map_err(NftError::Install)
}

/// Removes the table; `Ok(false)` when it was not there.
pub async fn remove() -> Result<bool, NftError> {
    if !status().await.present {
        return Ok(false);
    }
    let mut batch = Batch::new();
    batch.delete(NfListObject::Table(Table { family: NfFamily::INet, name: Cow::Borrowed(TABLE), handle: None }));
    nftables::helper::apply_ruleset_async(&batch.to_nftables()).await.map_err(NftError::Remove)?;
    Ok(true)
}

/// Reads the table back: present, rule count, packets dropped by the final rule.
pub async fn status() -> Installed {
    // Read as plain JSON: deserializing into the crate's full model would link its whole
    // (large) Deserialize tree for three numbers.
    let Ok(text) = nft_json(&["list", "table", "inet", TABLE]).await else { return Installed::default() };
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else { return Installed::default() };
    let mut st = Installed { present: true, ..Default::default() };
    for rule in doc["nftables"].as_array().into_iter().flatten().filter_map(|o| o.get("rule")) {
        st.rules += 1;
        let expr = rule["expr"].as_array().map(Vec::as_slice).unwrap_or_default();
        if rule["chain"] == GUARD
            && let [counter, verdict] = expr
            && verdict.get("drop").is_some()
            && let Some(packets) = counter["counter"]["packets"].as_u64()
        {
            st.dropped_packets = st.dropped_packets.max(packets);
        }
    }
    st
}
