//! `mykey`: the command line of operators, partners and testers against a running `mykeyd`.
//!
//! A thin shell over the client library: it reads certificate files, runs one call, and prints
//! the answer for a human (default) or as one JSON object (`--json`). Exit codes: 0 success
//! (for a lookup: a service ID was found), 3 a lookup answered without a service ID (not linked,
//! unknown, provisional, suspended, deleted), 1 a refusal or an error, 2 bad usage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use mykey_engine::client::{Client, ClientError, ClientTls};
use mykey_engine::id::{MyKeyId, ProviderId, PushId, ServiceId};
use mykey_engine::jpki::CardProof;
use mykey_engine::jpki::dev::DevKey;
use mykey_engine::registry::{CardWrite, IdState, LinkOutcome, Lookup, PushSummary};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "mykey",
    version,
    about = "Talk to a mykeyd server over mykey/1 (QUIC)"
)]
struct Cli {
    /// The server's QUIC address.
    #[arg(long, default_value = "127.0.0.1:4433", global = true)]
    server: SocketAddr,
    /// The name in the server's certificate.
    #[arg(long, default_value = "localhost", global = true)]
    server_name: String,
    /// A development setup (from `mykeyd init`): use its terminal certificate for --as.
    #[arg(long, value_name = "DIR", global = true)]
    dev: Option<PathBuf>,
    /// With --dev: which terminal (counter, municipal, portal, partner, operator, node).
    #[arg(
        long = "as",
        value_name = "ROLE",
        default_value = "counter",
        global = true
    )]
    role: String,
    /// The client certificate (PEM), when not using --dev.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// The CA the server's certificate chains to (PEM).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Read your writes: a write also prints the seq at which it is visible (`seq N`, or
    /// `"seq"` in JSON), to pass to a later command's --at-least on any node.
    #[arg(long, global = true)]
    seq: bool,
    /// Read your writes: serve this read only from a node that has applied SEQ (it waits up
    /// to 2 s, else the read is refused BEHIND).
    #[arg(long, value_name = "SEQ", global = true)]
    at_least: Option<u64>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// A simulated card: its certificate and the key that signs challenges (development and load
/// testing; a real terminal has the card sign through its reader).
#[derive(Args)]
struct CardArgs {
    /// The card's authentication certificate (DER).
    #[arg(long)]
    card: PathBuf,
    /// The card's private key (PKCS#8 DER).
    #[arg(long)]
    card_key: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// The service ID PROVIDER has for ID.
    Lookup { provider: String, id: String },
    /// Many lookups for one provider in one request.
    Batch { provider: String, ids: Vec<String> },
    /// Link SERVICE to ID for PROVIDER.
    Link {
        id: String,
        provider: String,
        service: String,
        /// Replace a different service ID.
        #[arg(long)]
        replace: bool,
    },
    /// Remove PROVIDER's link of ID.
    Unlink { id: String, provider: String },
    /// Full registration with a card: the ID is the CN's 14 characters.
    Register(CardArgs),
    /// Provisional registration of a chosen ID with a card.
    Provisional {
        id: String,
        #[command(flatten)]
        card: CardArgs,
    },
    /// Confirm a provisional ID with the card present.
    Confirm {
        id: String,
        #[command(flatten)]
        card: CardArgs,
    },
    /// Re-bind ID to the holder's new card.
    Rebind {
        id: String,
        #[command(flatten)]
        card: CardArgs,
    },
    /// Authenticated lookup: the ID bound to the card and PROVIDER's service ID for it.
    CardLookup {
        provider: String,
        #[command(flatten)]
        card: CardArgs,
    },
    /// Delete ID (it is never issued again).
    Delete { id: String },
    /// Push a DER CRL (partners).
    PushCrl {
        /// Retrying with the same push id changes nothing.
        #[arg(long)]
        push_id: String,
        file: PathBuf,
    },
    /// Push a serial list (partners; format in engine/JPKI.md).
    PushSerials {
        /// Retrying with the same push id changes nothing.
        #[arg(long)]
        push_id: String,
        file: PathBuf,
    },
    /// A provider's links as CSV: mykey_id,state,service_id.
    Export { provider: String },
    /// Server statistics (operators).
    Stats,
    /// Register a service provider (operators).
    AddProvider { provider: String },
}

/// How the command ended, for the exit code.
enum Done {
    Ok,
    NotFound,
}

fn arg<T>(
    what: &str,
    s: &str,
    parse: impl Fn(&[u8]) -> Result<T, mykey_engine::id::IdError>,
) -> Result<T, String> {
    parse(s.as_bytes()).map_err(|e| format!("{what} {s:?}: {e}"))
}

fn tls(cli: &Cli) -> Result<ClientTls, String> {
    let (cert, key, ca) = match &cli.dev {
        Some(d) => {
            let t = d.join("pki/terminals");
            (
                t.join(format!("{}.pem", cli.role)),
                t.join(format!("{}.key", cli.role)),
                d.join("pki/client-ca.pem"),
            )
        }
        None => (
            cli.cert
                .clone()
                .ok_or("give --dev DIR, or --cert, --key and --ca")?,
            cli.key.clone().ok_or("give --key with --cert")?,
            cli.ca.clone().ok_or("give --ca with --cert")?,
        ),
    };
    ClientTls::from_pem_files(&cert, &key, &ca)
}

/// The answer as JSON: its kind and, when linked, the service ID.
fn answer_json(l: &Lookup) -> serde_json::Value {
    match l {
        Lookup::Linked(s) => json!({"answer": l.kind(), "service_id": s.to_string()}),
        _ => json!({"answer": l.kind()}),
    }
}

fn found(l: &Lookup) -> Done {
    if matches!(l, Lookup::Linked(_)) {
        Done::Ok
    } else {
        Done::NotFound
    }
}

fn summary(s: &PushSummary) -> serde_json::Value {
    json!({
        "entries": s.entries,
        "newly_revoked": s.revoke.newly_revoked,
        "already_known": s.revoke.already_known,
        "suspended": s.revoke.suspended,
        "replayed": s.replayed,
    })
}

fn state_name(s: IdState) -> &'static str {
    s.name()
}

struct Out<'a> {
    json: bool,
    /// With --seq: the client whose last write's seq is shown with the answer.
    seq_of: Option<&'a Client>,
}

impl Out<'_> {
    fn show(&self, text: String, mut value: serde_json::Value) {
        let seq = self.seq_of.map(Client::seen_seq).filter(|&s| s > 0);
        if self.json {
            if let (Some(seq), Some(o)) = (seq, value.as_object_mut()) {
                o.insert("seq".to_owned(), json!(seq));
            }
            println!("{value}");
        } else {
            println!("{text}");
            if let Some(seq) = seq {
                println!("seq {seq}");
            }
        }
    }
}

async fn with_card<T>(
    c: &Client,
    card: &CardArgs,
    f: impl AsyncFnOnce(CardProof<'_>) -> Result<T, ClientError>,
) -> Result<T, String> {
    let cert = std::fs::read(&card.card).map_err(|e| format!("{}: {e}", card.card.display()))?;
    let key_der =
        std::fs::read(&card.card_key).map_err(|e| format!("{}: {e}", card.card_key.display()))?;
    let key =
        DevKey::from_pkcs8(&key_der).map_err(|e| format!("{}: {e}", card.card_key.display()))?;
    let ch = c.challenge().await.map_err(|e| e.to_string())?;
    let sig = key.sign(&ch.bytes).map_err(|e| e.to_string())?;
    f(CardProof {
        cert_der: &cert,
        challenge: &ch.bytes,
        signature: &sig,
    })
    .await
    .map_err(|e| e.to_string())
}

/// A card-present write on ID `i`, reported as `<id> <did>`.
async fn card_write(
    c: &Client,
    out: &Out<'_>,
    card: &CardArgs,
    i: &str,
    write: CardWrite,
    did: &str,
) -> Result<Done, String> {
    let i = arg("MyKey ID", i, MyKeyId::parse)?;
    with_card(c, card, async |p| match write {
        CardWrite::RegisterProvisional => c.register_provisional(i, p).await,
        CardWrite::Confirm => c.confirm(i, p).await,
        CardWrite::Rebind => c.rebind(i, p).await,
    })
    .await?;
    out.show(format!("{i} {did}"), json!({"mykey_id": i.as_str()}));
    Ok(Done::Ok)
}

async fn run(cli: Cli) -> Result<Done, String> {
    let c = Client::connect(cli.server, &cli.server_name, tls(&cli)?)
        .await
        .map_err(|e| format!("{}: {e}", cli.server))?;
    if cli.seq || cli.at_least.is_some() {
        c.set_read_your_writes(true);
        c.saw_seq(cli.at_least.unwrap_or(0));
    }
    let out = Out {
        json: cli.json,
        seq_of: cli.seq.then_some(&c),
    };
    let id = |s: &str| arg("MyKey ID", s, MyKeyId::parse);
    let provider = |s: &str| arg("provider", s, ProviderId::parse);
    let e = |e: ClientError| e.to_string();
    let done = match &cli.cmd {
        Cmd::Lookup { provider: p, id: i } => {
            let (p, i) = (provider(p)?, id(i)?);
            let l = c.lookup(p, i).await.map_err(e)?;
            out.show(format!("{i} @ {p}: {}", l), answer_json(&l));
            found(&l)
        }
        Cmd::Batch { provider: p, ids } => {
            let p = provider(p)?;
            let ids: Vec<MyKeyId> = ids.iter().map(|s| id(s)).collect::<Result<_, _>>()?;
            let ls = c.lookup_batch(p, &ids).await.map_err(e)?;
            let text = ids
                .iter()
                .zip(&ls)
                .map(|(i, l)| format!("{i} @ {p}: {}", l))
                .collect::<Vec<_>>()
                .join("\n");
            let value = json!(
                ids.iter()
                    .zip(&ls)
                    .map(|(i, l)| {
                        let mut v = answer_json(l);
                        v["mykey_id"] = json!(i.as_str());
                        v
                    })
                    .collect::<Vec<_>>()
            );
            out.show(text, value);
            Done::Ok
        }
        Cmd::Link {
            id: i,
            provider: p,
            service,
            replace,
        } => {
            let s = ServiceId::parse_text(service)
                .map_err(|err| format!("service ID {service:?}: {err}"))?;
            let o = c.link(id(i)?, provider(p)?, s, *replace).await.map_err(e)?;
            let (text, v) = match o {
                LinkOutcome::Linked => ("linked".to_owned(), json!({"outcome": "linked"})),
                LinkOutcome::AlreadyLinked => (
                    "already linked with this service ID".to_owned(),
                    json!({"outcome": "already_linked"}),
                ),
                LinkOutcome::Replaced { previous } => (
                    format!("replaced {previous}"),
                    json!({"outcome": "replaced", "previous": previous.to_string()}),
                ),
            };
            out.show(text, v);
            Done::Ok
        }
        Cmd::Unlink { id: i, provider: p } => {
            let removed = c.unlink(id(i)?, provider(p)?).await.map_err(e)?;
            out.show(
                if removed {
                    "unlinked"
                } else {
                    "there was no link"
                }
                .into(),
                json!({"unlinked": removed}),
            );
            Done::Ok
        }
        Cmd::Register(card) => {
            let new = with_card(&c, card, async |p| c.register_full(p).await).await?;
            out.show(
                format!("registered {new}"),
                json!({"mykey_id": new.as_str()}),
            );
            Done::Ok
        }
        Cmd::Provisional { id: i, card } => {
            let did = "registered provisionally";
            card_write(&c, &out, card, i, CardWrite::RegisterProvisional, did).await?
        }
        Cmd::Confirm { id: i, card } => {
            card_write(&c, &out, card, i, CardWrite::Confirm, "confirmed").await?
        }
        Cmd::Rebind { id: i, card } => {
            let did = "re-bound to the new card";
            card_write(&c, &out, card, i, CardWrite::Rebind, did).await?
        }
        Cmd::CardLookup { provider: p, card } => {
            let p = provider(p)?;
            let (bound, l) =
                with_card(&c, card, async |proof| c.lookup_card(p, proof).await).await?;
            let mut v = answer_json(&l);
            v["mykey_id"] = json!(bound.map(|b| b.as_str().to_owned()));
            let who = bound.map_or("no MyKey ID bound to this card".to_owned(), |b| {
                b.to_string()
            });
            out.show(format!("{who} @ {p}: {}", l), v);
            found(&l)
        }
        Cmd::Delete { id: i } => {
            let i = id(i)?;
            c.delete(i).await.map_err(e)?;
            out.show(format!("{i} deleted"), json!({"deleted": i.as_str()}));
            Done::Ok
        }
        Cmd::PushCrl { push_id, file } | Cmd::PushSerials { push_id, file } => {
            let push =
                PushId::parse(push_id.as_bytes()).map_err(|err| format!("--push-id: {err}"))?;
            let bytes = std::fs::read(file).map_err(|err| format!("{}: {err}", file.display()))?;
            let s = if matches!(cli.cmd, Cmd::PushCrl { .. }) {
                c.push_crl(push, &bytes).await
            } else {
                c.push_serials(push, &bytes).await
            }
            .map_err(e)?;
            out.show(
                format!(
                    "{}{} entries: {} newly revoked, {} already known, {} MyKey IDs suspended",
                    if s.replayed { "already applied: " } else { "" },
                    s.entries,
                    s.revoke.newly_revoked,
                    s.revoke.already_known,
                    s.revoke.suspended
                ),
                summary(&s),
            );
            Done::Ok
        }
        Cmd::Export { provider: p } => {
            let p = provider(p)?;
            if !cli.json {
                println!("mykey_id,state,service_id");
            }
            let json = cli.json;
            let n = c
                .export(p, |r| {
                    if json {
                        println!(
                            "{}",
                            json!({"mykey_id": r.id.as_str(), "state": state_name(r.state), "service_id": r.service.to_string()})
                        );
                    } else {
                        println!("{},{},{}", r.id, state_name(r.state), r.service);
                    }
                })
                .await
                .map_err(e)?;
            eprintln!("{n} rows");
            Done::Ok
        }
        Cmd::Stats => {
            let s = c.stats().await.map_err(e)?;
            let text = s
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join("\n");
            let value =
                serde_json::Value::Object(s.iter().map(|(k, v)| (k.clone(), json!(v))).collect());
            out.show(text, value);
            Done::Ok
        }
        Cmd::AddProvider { provider: p } => {
            let p = provider(p)?;
            let new = c.register_provider(p).await.map_err(e)?;
            out.show(
                if new {
                    format!("{p} registered")
                } else {
                    format!("{p} was registered already")
                },
                json!({"provider": p.as_str(), "new": new}),
            );
            Done::Ok
        }
    };
    c.close().await;
    Ok(done)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mykey: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(Done::Ok) => ExitCode::SUCCESS,
        Ok(Done::NotFound) => ExitCode::from(3),
        Err(e) => {
            if json {
                println!("{}", json!({"error": e}));
            }
            eprintln!("mykey: {e}");
            ExitCode::FAILURE
        }
    }
}
