//! A private PostgreSQL cluster for one test: `initdb` in a folder of its own, a free port on the
//! loopback interface, trust authentication; stopped and deleted on drop. As root every server
//! command runs as the `postgres` user, since the server refuses to run as root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The newest PostgreSQL server binaries: `OATH_PG_BINDIR`, else /usr/lib/postgresql/<v>/bin.
pub fn server_binaries() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("OATH_PG_BINDIR").map(PathBuf::from) {
        return usable(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            usable(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The server binaries, or a failure saying how to get them: a test that needs a real server
/// must never pass without one.
pub fn require_server_binaries() -> PathBuf {
    server_binaries().expect(
        "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql or \
         OATH_PG_BINDIR: install the postgresql package (scripts/check does)",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Whether the `postgres` user can enter `dir` (and so a folder made in it for that user).
fn reachable_by_postgres(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

pub struct Cluster {
    bin: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl Cluster {
    /// A new cluster named `name` (unique per process), initialised and started.
    pub fn create(bin: PathBuf, name: &str) -> Self {
        let cluster = Self::init(bin, name);
        cluster.start();
        cluster
    }

    /// A new cluster, initialised but not started, so that a test can configure it first.
    pub fn init(bin: PathBuf, name: &str) -> Self {
        let as_postgres = is_root();
        let name = format!("{name}-{}", std::process::id());
        let mut dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&name);
        // The postgres user must reach the data directory: not so under /root, for one.
        if as_postgres && !reachable_by_postgres(dir.parent().unwrap()) {
            dir = std::env::temp_dir().join(format!("oath-service-{name}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = Self {
            bin,
            data: dir.join("data"),
            log: dir.join("postgres.log"),
            port: free_port(),
            as_postgres,
        };
        std::fs::create_dir_all(&cluster.data).unwrap();
        std::fs::File::create(&cluster.log).unwrap();
        cluster.give_to_postgres(&dir);
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ],
        );
        cluster.configure(&format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = ''\n\
             fsync = off\nmax_connections = 40\n",
            cluster.port
        ));
        cluster
    }

    /// Appends settings to postgresql.conf (a later line wins over an earlier one).
    pub fn configure(&self, settings: &str) {
        self.append("postgresql.conf", settings);
    }

    /// Appends lines to pg_hba.conf.
    pub fn allow(&self, hba_lines: &str) {
        self.append("pg_hba.conf", hba_lines);
    }

    fn append(&self, file: &str, text: &str) {
        let path = self.data.join(file);
        let mut content = std::fs::read_to_string(&path).unwrap();
        content.push('\n');
        content.push_str(text);
        content.push('\n');
        std::fs::write(&path, content).unwrap();
    }

    /// Writes a file into the data directory, readable by the server only (mode 0600, as
    /// PostgreSQL demands of a private key).
    pub fn install_private_file(&self, name: &str, content: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        self.give_to_postgres(&path);
    }

    fn give_to_postgres(&self, path: &Path) {
        if self.as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path)
                .status()
                .unwrap();
            assert!(chown.success(), "chown {path:?} to postgres");
        }
    }

    /// Runs a server binary (as postgres when we are root) and asserts success.
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn start(&self) {
        let (data, log) = (self.data.to_str().unwrap(), self.log.to_str().unwrap());
        self.run(
            "pg_ctl",
            &["-D", data, "-l", log, "-w", "-t", "60", "start"],
        );
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, as in a crash.
    pub fn crash(&self) {
        let data = self.data.to_str().unwrap();
        self.run("pg_ctl", &["-D", data, "-w", "-m", "immediate", "stop"]);
    }

    /// A URL for database `db` as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap().to_string();
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.data.parent().unwrap());
        }
    }
}
