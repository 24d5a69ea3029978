//! `mykeyd export`: a provider's links as CSV on standard output (RFC 4180 quoting), read from
//! a store directory.

use std::io::Write;
use std::path::Path;

use mykey_engine::id::ProviderId;

use crate::common::open_registry;

/// `mykeyd export`.
pub fn export(dir: &Path, provider: &str) -> Result<(), String> {
    let reg = open_registry(dir)?;
    let p = ProviderId::parse(provider.as_bytes()).map_err(|e| format!("{provider:?}: {e}"))?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut err = Ok(());
    writeln!(out, "mykey_id,state,service_id,linked_at,linked_by").map_err(|e| e.to_string())?;
    let n = reg
        .export(&p, |r| {
            if err.is_ok() {
                err = writeln!(
                    out,
                    "{},{},{},{},{}",
                    r.id,
                    r.state.name(),
                    csv_field(&r.service.to_string()),
                    r.linked_at,
                    csv_field(r.linked_by.as_str())
                );
            }
        })
        .map_err(|e| e.to_string())?;
    err.and_then(|()| out.flush()).map_err(|e| e.to_string())?;
    eprintln!("{n} rows");
    Ok(())
}

/// A CSV field: quoted (RFC 4180) when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("ABC123"), "ABC123");
        assert_eq!(csv_field("A,B"), "\"A,B\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
