//! A pg_auto_failover formation for one test: a monitor and two data nodes (a primary and its
//! synchronous standby) on the loopback interface, each a `pg_autoctl run` of its own, in a
//! folder of their own, with the monitor tuned to fail over within seconds. As root every
//! command runs as the `postgres` user. Stopped (every process killed) and deleted on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::cluster::{free_port, server_binaries};

/// The monitor's health checks, tuned for a fast failover (the defaults take about 30 s): a
/// check a second, a node unhealthy after 2 s without an answer, and a promotion that waits
/// 5 s at most for the former primary to confirm that it stopped.
const MONITOR_SETTINGS: &str = "
pgautofailover.health_check_period = 1000
pgautofailover.health_check_timeout = 1000
pgautofailover.health_check_max_retries = 1
pgautofailover.health_check_retry_delay = 500
pgautofailover.node_considered_unhealthy_timeout = 2000
pgautofailover.primary_demote_timeout = 5000
";

/// Data nodes: the processes are killed, never the machine, so what the server wrote is in
/// the kernel's cache: no fsync needed (nor wanted on a busy test machine).
const NODE_SETTINGS: &str = "
fsync = off
max_connections = 60
";

/// `pg_autoctl`: `OATH_PG_AUTOCTL`, else on `PATH` or in /usr/bin.
pub fn pg_autoctl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("OATH_PG_AUTOCTL").map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/bin".into());
    dirs.into_iter()
        .map(|d| d.join("pg_autoctl"))
        .find(|p| p.is_file())
}

/// `pg_autoctl` and the server binaries, or a failure saying how to get them: the failover test
/// must never pass without a real formation.
pub fn require_pg_auto_failover() -> (PathBuf, PathBuf) {
    let autoctl = pg_autoctl().expect(
        "no pg_autoctl (OATH_PG_AUTOCTL, PATH, /usr/bin): install Debian's \
         postgresql-15-auto-failover (scripts/check does)",
    );
    let bin = server_binaries().expect(
        "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql or \
         OATH_PG_BINDIR: install the postgresql package (scripts/check does)",
    );
    (autoctl, bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A data node: its port, data directory and the `pg_autoctl run` that keeps it.
pub struct Node {
    pub name: String,
    pub port: u16,
    pub data: PathBuf,
    run: Option<Child>,
}

impl Node {
    /// A URL for database `db` on this node alone, as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The postmaster's process id, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }
}

pub struct Formation {
    autoctl: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    monitor_port: u16,
    monitor: Option<Child>,
    pub nodes: Vec<Node>,
}

impl Formation {
    /// A monitor and two data nodes, running; returns once the first node is the primary with
    /// the second as its synchronous standby.
    pub async fn create(autoctl: PathBuf, bin: PathBuf, name: &str) -> Self {
        let as_postgres = is_root();
        let name = format!("{name}-{}", std::process::id());
        let mut dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&name);
        if as_postgres && !reachable_by_postgres(dir.parent().unwrap()) {
            dir = std::env::temp_dir().join(format!("oath-service-{name}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut formation = Self {
            autoctl,
            bin,
            dir,
            as_postgres,
            monitor_port: free_port(),
            monitor: None,
            nodes: Vec::new(),
        };
        for sub in ["config", "share", "run"] {
            std::fs::create_dir_all(formation.dir.join(sub)).unwrap();
        }
        formation.give_to_postgres(&formation.dir);

        let monitor_data = formation.dir.join("monitor");
        let pg_ctl = formation.bin.join("pg_ctl");
        formation.autoctl_create(
            "monitor",
            &[
                "create",
                "monitor",
                "--pgdata",
                monitor_data.to_str().unwrap(),
                "--pgport",
                &formation.monitor_port.to_string(),
                "--hostname",
                "127.0.0.1",
                "--listen",
                "127.0.0.1",
                "--auth",
                "trust",
                "--no-ssl",
                "--pgctl",
                pg_ctl.to_str().unwrap(),
            ],
        );
        append(&monitor_data.join("postgresql.conf"), MONITOR_SETTINGS);
        formation.monitor = Some(formation.spawn_run("monitor", &monitor_data));
        formation.wait_for_port(formation.monitor_port).await;

        for n in 1..=2 {
            let node = Node {
                name: format!("node{n}"),
                port: free_port(),
                data: formation.dir.join(format!("node{n}")),
                run: None,
            };
            let monitor_url = format!(
                "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
                formation.monitor_port
            );
            formation.autoctl_create(
                &node.name,
                &[
                    "create",
                    "postgres",
                    "--pgdata",
                    node.data.to_str().unwrap(),
                    "--pgport",
                    &node.port.to_string(),
                    "--hostname",
                    "127.0.0.1",
                    "--listen",
                    "127.0.0.1",
                    "--name",
                    &node.name,
                    "--auth",
                    "trust",
                    "--no-ssl",
                    "--monitor",
                    &monitor_url,
                    "--pgctl",
                    pg_ctl.to_str().unwrap(),
                ],
            );
            append(&node.data.join("postgresql.conf"), NODE_SETTINGS);
            let run = formation.spawn_run(&node.name, &node.data);
            formation.nodes.push(Node {
                run: Some(run),
                ..node
            });
            // The standby's `create` copies the primary: it must be running first.
            let primary = &formation.nodes[0].url("postgres");
            formation
                .wait_until("the first node runs", || async move {
                    writable(primary).await == Some(true)
                })
                .await;
        }
        let (primary, standby) = (
            &formation.nodes[0].url("postgres"),
            &formation.nodes[1].url("postgres"),
        );
        formation
            .wait_until("a synchronous standby", || async move {
                writable(standby).await == Some(false) && synchronous_standbys(primary).await > 0
            })
            .await;
        formation
    }

    /// The node that accepts writes now, if exactly one does.
    pub async fn primary(&self) -> Option<&Node> {
        let mut writable_nodes = Vec::new();
        for node in &self.nodes {
            if writable(&node.url("postgres")).await == Some(true) {
                writable_nodes.push(node);
            }
        }
        (writable_nodes.len() == 1).then(|| writable_nodes[0])
    }

    /// Kills data node `index` as a lost machine would be: its `pg_autoctl run`, the keeper, and
    /// the postmaster, at once (`kill -9`). Killing the postmaster alone is not a lost primary:
    /// its keeper starts it again within a second, as the primary.
    pub fn kill_node(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let postmaster = node.postmaster_pid().expect("the node's postmaster.pid");
        let mut run = node.run.take().expect("the node runs");
        let group = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", run.id())])
            .status()
            .unwrap();
        assert!(group.success(), "kill the process group of {}", node.name);
        let _ = Command::new("kill")
            .args(["-KILL", &postmaster.to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = run.wait();
    }

    /// The URL of database `db` naming every data node, libpq's form.
    pub fn url(&self, db: &str, query: &str) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("postgres://postgres@{}/{db}{query}", hosts.join(","))
    }

    /// `pg_autoctl show state`, for a failure message or a report.
    pub fn state(&self) -> String {
        let monitor = self.dir.join("monitor");
        let out = self
            .command(&["show", "state", "--pgdata", monitor.to_str().unwrap()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out
    }

    /// The log of `pg_autoctl run` of `name` (`monitor`, `node1`, ...).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Waits for `condition`, up to three minutes, failing with the formation's state.
    pub async fn wait_until<F, Fut>(&self, what: &str, condition: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !condition().await {
            assert!(
                Instant::now() < deadline,
                "pg_auto_failover: no {what} after 3 minutes\n{}\nmonitor log:\n{}\nnode1 log:\n{}\nnode2 log:\n{}",
                self.state(),
                self.log("monitor"),
                self.log("node1"),
                self.log("node2"),
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_for_port(&self, port: u16) {
        let url = &format!("postgres://autoctl_node@127.0.0.1:{port}/pg_auto_failover");
        self.wait_until("monitor", || async move {
            PgConnection::connect(url).await.is_ok()
        })
        .await;
    }

    /// `pg_autoctl` with the formation's private configuration folders, as postgres when root.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&self.autoctl);
            c
        } else {
            Command::new(&self.autoctl)
        };
        // pg_autoctl finds pg_ctl and friends on PATH too.
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.args(args)
            .env("PATH", path)
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("XDG_DATA_HOME", self.dir.join("share"))
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a `pg_autoctl create ...` to its end; its output goes to `<name>.log`.
    fn autoctl_create(&self, name: &str, args: &[&str]) {
        let log = self.log_file(name);
        let status = self
            .command(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap_or_else(|e| panic!("pg_autoctl {args:?}: {e}"));
        assert!(
            status.success(),
            "pg_autoctl {args:?}: {status}\n{}",
            self.log(name)
        );
    }

    /// `pg_autoctl run` of `data`, in a process group of its own (so that dropping the
    /// formation can kill it with every process it started).
    fn spawn_run(&self, name: &str, data: &Path) -> Child {
        let log = self.log_file(name);
        self.command(&["run", "--pgdata", data.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("pg_autoctl run starts")
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap()
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
}

impl Drop for Formation {
    fn drop(&mut self) {
        // Each server's processes, noted first: PostgreSQL gives every child of a postmaster a
        // session of its own, so the kill of a `pg_autoctl run` group below leaves them behind,
        // and one that does not watch for its postmaster's end (the monitor's health check
        // worker, and the logger whose pipe it holds) would outlive the test.
        let postmasters: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.data.clone())
            .chain([self.dir.join("monitor")])
            .filter_map(|data| {
                let pid = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
                Some(pid.lines().next()?.trim().to_string())
            })
            .collect();
        let mut servers = children_of(&postmasters);
        servers.extend(postmasters);
        // Every process of every `pg_autoctl run` (its group), then those servers' processes.
        let groups = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.run.take())
            .chain(self.monitor.take());
        for mut child in groups {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
        if !servers.is_empty() {
            // Most are gone with their group or their postmaster already.
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(&servers)
                .stderr(Stdio::null())
                .status();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The processes whose parent is one of `parents` (process ids, as in `/proc`).
fn children_of(parents: &[String]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid = entry.ok()?.file_name().into_string().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command name: the state, then the parent's id.
            let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            parents.iter().any(|p| p == parent).then_some(pid)
        })
        .collect()
}

fn append(path: &Path, text: &str) {
    let mut content = std::fs::read_to_string(path).unwrap();
    content.push_str("\n# oath-service's failover test\n");
    content.push_str(text);
    std::fs::write(path, content).unwrap();
}

/// Whether the postgres user can enter `dir`.
fn reachable_by_postgres(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the server of `url` accepts writes; None when it does not answer.
pub async fn writable(url: &str) -> Option<bool> {
    let mut conn = tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(url))
        .await
        .ok()?
        .ok()?;
    let in_recovery: bool = sqlx::query_scalar("select pg_is_in_recovery()")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    let _ = conn.close().await;
    Some(!in_recovery)
}

/// Standbys the server of `url` waits for at commit (`sync` or `quorum` in
/// `pg_stat_replication`); 0 when it does not answer.
pub async fn synchronous_standbys(url: &str) -> i64 {
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return 0;
    };
    let n = sqlx::query_scalar(
        "select count(*) from pg_stat_replication where sync_state in ('sync', 'quorum') \
         and current_setting('synchronous_commit') <> 'off'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap_or(0);
    let _ = conn.close().await;
    n
}
