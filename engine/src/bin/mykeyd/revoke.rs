//! `mykeyd revoke`: a partner's revocation push (a DER CRL or a serial list) applied by hand
//! to a store directory, checked against a trust-anchor directory, durable when it returns.

use std::time::Instant;

use mykey_engine::id::{ActorId, PushId};
use mykey_engine::jpki::{Jpki, JpkiConfig};

use crate::RevokeArgs;
use crate::common::{now, open_registry};

/// `mykeyd revoke`.
pub fn revoke(a: &RevokeArgs) -> Result<(), String> {
    let at = now();
    let jpki = Jpki::new(crate::anchors::load(&a.anchors)?, JpkiConfig::default());
    let push = PushId::parse(a.push_id.as_bytes()).map_err(|e| format!("--push-id: {e}"))?;
    let actor = ActorId::parse(a.actor.as_bytes()).map_err(|e| format!("--actor: {e}"))?;
    let (path, is_crl) = match (&a.crl, &a.serials) {
        (Some(p), None) => (p, true),
        (None, Some(p)) => (p, false),
        _ => return Err("give exactly one of --crl and --serials".into()),
    };
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reg = open_registry(&a.store.dir)?;
    let start = Instant::now();
    let s = if is_crl {
        reg.push_crl(at, actor, &jpki, push, &bytes)
    } else {
        reg.push_serials(at, actor, &jpki, push, &bytes)
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "{}push {push}: {} entries, {} newly revoked, {} already known, {} MyKey IDs suspended ({:.2} s, durable)",
        if s.replayed { "already applied: " } else { "" },
        s.entries,
        s.revoke.newly_revoked,
        s.revoke.already_known,
        s.revoke.suspended,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
