//! A throwaway PostgreSQL server for the cluster tests: `initdb` into a temporary directory
//! and `postgres` on 127.0.0.1 and a free port, both run as the unprivileged `postgres` user
//! when the tests run as root (PostgreSQL refuses root). Where PostgreSQL is not installed or
//! cannot start, [`Postgres::start`] says so loudly on stderr and returns `None`, and the test
//! skips. Depends on the standard library only, so that the engine's process tests include it
//! too (`#[path]`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The server's directory, removed on drop.
struct PgDir(PathBuf);

impl PgDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "mykey-pg-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create the postgres directory");
        Self(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PgDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running PostgreSQL, stopped (immediate shutdown) and removed on drop.
pub struct Postgres {
    dir: PgDir,
    port: u16,
    child: Child,
    bin: PathBuf,
}

/// Runs `postgres` on the data directory in `dir`, on 127.0.0.1:`port`, its log appended to
/// `dir/postgres.log`.
fn spawn(bin: &Path, dir: &PgDir, port: u16) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("postgres.log"))?;
    pg_command(bin, "postgres")
        .arg("-D")
        .arg(dir.path().join("data"))
        .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
        .arg(dir.path())
        .args(["-c", "max_connections=40", "-c", "shared_buffers=16MB"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
}

/// The directory of PostgreSQL's programs (`initdb`, `pg_basebackup`, `pg_ctl`, …): where the
/// `initdb` on the PATH really lives (a link to Debian's versioned directory, say), or the
/// newest of Debian's.
fn bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        let d = std::env::split_paths(&p)
            .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())?;
        Some(
            std::fs::canonicalize(d.join("initdb"))
                .ok()
                .and_then(|f| f.parent().map(Path::to_path_buf))
                .unwrap_or(d),
        )
    });
    on_path.or_else(|| {
        let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|d| d.join("initdb").is_file())
            .collect();
        v.sort();
        v.pop()
    })
}

/// When this process is root, makes the `postgres` user own `dir` (and reach it); whether it
/// could.
fn hand_to_postgres(dir: &PgDir) -> bool {
    if !is_root() {
        return true;
    }
    let ok = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    let _ = Command::new("chmod").arg("0755").arg(dir.path()).status();
    ok
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A command running `program` from `bin`, as the `postgres` user when this process is root.
fn pg_command(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn skip(why: &str) -> Option<Postgres> {
    eprintln!(
        "\n*** SKIPPED: PostgreSQL cannot run here: {why} ***\n*** (.ci/run installs Debian's postgresql; install it to run the cluster tests) ***\n"
    );
    None
}

impl Postgres {
    /// Starts a new server, or says why not and returns `None`.
    pub fn start(tag: &str) -> Option<Self> {
        let Some(bin) = bin_dir() else {
            return skip("no initdb and postgres on the PATH or under /usr/lib/postgresql");
        };
        let dir = PgDir::new(tag);
        let data = dir.path().join("data");
        if !hand_to_postgres(&dir) {
            return skip("cannot hand the data directory to the postgres user");
        }
        let init = pg_command(&bin, "initdb")
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "mykey",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match init {
            Ok(o) if o.status.success() => {}
            Ok(o) => return skip(&format!("initdb: {}", String::from_utf8_lossy(&o.stderr))),
            Err(e) => return skip(&format!("initdb: {e}")),
        }
        let port = free_port();
        let child = match spawn(&bin, &dir, port) {
            Ok(c) => c,
            Err(e) => return skip(&format!("postgres: {e}")),
        };
        let pg = Postgres {
            dir,
            port,
            child,
            bin,
        };
        pg.wait_ready(1);
        Some(pg)
    }

    /// A hot standby of this server, streaming from it as `application_name` (the name
    /// `synchronous_standby_names` lists), made with `pg_basebackup` and started on a port of
    /// its own; returns once it accepts read-only connections.
    pub fn standby(&self, application_name: &str) -> Self {
        let dir = PgDir::new(&format!("standby-{application_name}"));
        hand_to_postgres(&dir);
        let data = dir.path().join("data");
        let o = pg_command(&self.bin, "pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "mykey",
                "-D",
            ])
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast"])
            .output()
            .expect("pg_basebackup");
        assert!(
            o.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // The last setting wins: the standby names itself to the primary.
        let conninfo = format!(
            "\nprimary_conninfo = 'host=127.0.0.1 port={} user=mykey application_name={application_name}'\n",
            self.port
        );
        let auto = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).expect("postgresql.auto.conf");
        text.push_str(&conninfo);
        std::fs::write(&auto, text).expect("postgresql.auto.conf");
        let port = free_port();
        let child = spawn(&self.bin, &dir, port).expect("the standby");
        let pg = Postgres {
            dir,
            port,
            child,
            bin: self.bin.clone(),
        };
        pg.wait_for_log(
            "database system is ready to accept read-only connections",
            1,
        );
        pg
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waiting until it is done).
    pub fn promote(&self) {
        let o = pg_command(&self.bin, "pg_ctl")
            .args(["promote", "-w", "-D"])
            .arg(self.dir.path().join("data"))
            .output()
            .expect("pg_ctl promote");
        assert!(
            o.status.success(),
            "pg_ctl promote: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits until the log says `n` times that the server accepts connections.
    fn wait_ready(&self, n: usize) {
        self.wait_for_log("database system is ready to accept connections", n);
    }

    /// Waits until the log holds `line` `n` times.
    fn wait_for_log(&self, line: &str, n: usize) {
        let start = Instant::now();
        while self.log().matches(line).count() < n {
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "postgres did not log {line:?} within {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once (`kill -QUIT` of the postmaster: an immediate shutdown, every
    /// session cut, as a crash would) and waits for it to exit.
    pub fn stop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned));
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-QUIT", &pid]).status();
        }
        let _ = self.child.wait();
    }

    /// Starts the stopped server again on its data directory and port (crash recovery), and
    /// waits until it accepts connections.
    pub fn restart(&mut self) {
        let before = self
            .log()
            .matches("database system is ready to accept connections")
            .count();
        self.child = spawn(&self.bin, &self.dir, self.port).expect("postgres again");
        self.wait_ready(before + 1);
    }

    /// The connection string of the `postgres` database as the superuser `mykey`.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=mykey dbname=postgres",
            self.port
        )
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The child may be `runuser`, which does not pass signals on: `stop` signals the
        // postmaster itself. The directory goes with its PgDir.
        self.stop();
    }
}
