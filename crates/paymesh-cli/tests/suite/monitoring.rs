//! Monitoring against the real thing: a real Prometheus (Debian's package,
//! installed by `scripts/prometheus.sh`; its absence is a failure, never a
//! skip) scrapes `paymesh demo`'s mesh while the demo's workload runs,
//! with the alert rules of `deploy/monitoring/alerts.yml` loaded; the test
//! asks its HTTP API for every series docs/OPERATIONS.md lists, for values
//! that make sense, and for every rule evaluating without error. promtool
//! checks the rules and runs their unit tests, and the dashboard and the
//! rules may read only documented series.
//!
//! Meanwhile, on the same mesh (one demo for both: each costs a minute and
//! a half of a CI machine's two cores), a real headless Chromium (Debian's
//! package, installed by `scripts/chromium.sh`) with an operator's
//! certificate loads the operator console and the test asserts on what it
//! shows; an HTTP client checks that the console admits nothing but an
//! operator's certificate and only reads.

#![allow(clippy::unwrap_used)]

use crate::common::repo;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paymesh_harness::local::LocalRegion;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;

/// How long the demo's workload runs: long enough for the test's queries.
const DEMO_SECONDS: &str = "75";

/// `scripts/SCRIPT ARGS`'s stdout; fails the test if it fails.
fn script(script: &str, args: &[&str]) -> String {
    let output = Command::new("bash").arg(repo().join("scripts").join(script)).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "scripts/{script} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn prometheus_script(arg: &str) -> String {
    script("prometheus.sh", &[arg])
}

fn chromium_script(args: &[&str]) -> String {
    script("chromium.sh", args)
}

/// The series docs/OPERATIONS.md's table lists, with their types.
fn documented() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(repo().join("docs/OPERATIONS.md")).unwrap();
    let section = doc.split("\n## ").find(|s| s.starts_with("Metrics\n")).expect("a Metrics section");
    let rows: Vec<(String, String)> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('`')?;
            let kind = rest.trim_start_matches(" |").split('|').next()?.trim();
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect();
    assert!(rows.len() > 30, "docs/OPERATIONS.md lists {} series", rows.len());
    rows
}

/// The metric names an expression text reads.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &text[at..];
        let starts = ["paymesh_", "process_"].iter().any(|p| rest.starts_with(p));
        let boundary =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':');
        if starts && boundary {
            let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            names.insert(rest[..len].to_owned());
            at += len;
        } else {
            at += 1;
        }
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    prometheus_script("check");
}

#[test]
fn the_dashboard_and_the_rules_read_only_documented_series() {
    let documented: BTreeSet<String> = documented().into_iter().map(|(name, _)| name).collect();
    let histogram = |name: &str| {
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix)).map(str::to_owned)
    };
    let known = |name: &String| documented.contains(name) || histogram(name).is_some_and(|h| documented.contains(&h));
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/monitoring/dashboard.json")).unwrap())
            .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 15, "{} panels", panels.len());
    let mut read = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            read.extend(names_in(target["expr"].as_str().unwrap()));
        }
    }
    let rules = std::fs::read_to_string(repo().join("deploy/monitoring/alerts.yml")).unwrap();
    let exprs: String = rules.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    read.extend(names_in(&exprs));
    assert!(read.len() > 15, "{read:?}");
    let unknown: Vec<&String> = read.iter().filter(|name| !known(name)).collect();
    assert!(unknown.is_empty(), "read but not documented: {unknown:?}");
    assert!(names_in("x paymesh_a_total{y=\"1\"} / rate(process_cpu_seconds_total[1m]) paymesh:r")
        .into_iter()
        .eq(["paymesh_a_total".to_owned(), "process_cpu_seconds_total".to_owned()]));
}

/// The `[console] listen` address in a node's configuration text.
fn console_addr(text: &str) -> Option<String> {
    let (_, section) = text.split_once("[console]")?;
    config_value(section, "listen")
}

/// The console over plain HTTPS: an operator's certificate gets pages, a
/// partner's is refused, no certificate gets no connection, and nothing
/// but GET and HEAD is taken.
async fn console_admits_only_operators_and_only_reads(certs: &Path, addr: &str) {
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let client = |stem: Option<&str>| {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(20));
        if let Some(stem) = stem {
            let mut pem = std::fs::read(certs.join(format!("{stem}.pem"))).unwrap();
            pem.extend(std::fs::read(certs.join(format!("{stem}.key"))).unwrap());
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    };
    let url = format!("https://{addr}/");
    let operator = client(Some("operator-ops"));
    let page = operator.get(&url).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let headers = page.headers().clone();
    assert!(headers["content-security-policy"].to_str().unwrap().starts_with("default-src 'none'"), "{headers:?}");
    assert!(page.text().await.unwrap().contains("<section id=\"nodes\">"));
    let posted = operator.post(&url).send().await.unwrap();
    assert_eq!(posted.status().as_u16(), 405);
    assert_eq!(posted.headers()["allow"], "GET, HEAD");
    assert_eq!(operator.get(format!("{url}nothing-here")).send().await.unwrap().status().as_u16(), 404);
    let partner = client(Some("partner-paypal-us")).get(&url).send().await.unwrap();
    assert_eq!(partner.status().as_u16(), 403);
    assert!(partner.text().await.unwrap().contains("needs an operator certificate"));
    let anonymous = client(None).get(&url).send().await;
    assert!(anonymous.is_err(), "a caller without a certificate got {anonymous:?}");
}

/// Headless Chromium with an operator's profile.
struct Browser {
    chromium: String,
    profile: PathBuf,
}

impl Browser {
    /// Run Chromium headless on `url` with `args`; its stdout.
    fn run(&self, args: &[String], url: &str) -> String {
        let out = self.profile.join("stdout.html");
        let mut child = Command::new(&self.chromium)
            .env("HOME", &self.profile)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
            .arg(format!("--user-data-dir={}", self.profile.join("chromium").display()))
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "chromium on {url}: {status}");
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("chromium did not finish loading {url} in 90 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::fs::read_to_string(&out).unwrap()
    }

    /// The page's DOM after it loaded.
    fn dom(&self, url: &str) -> String {
        self.run(&["--dump-dom".to_owned()], url)
    }

    /// A screenshot of the page, as a PNG file at `path`.
    fn screenshot(&self, url: &str, path: &Path, height: u32) {
        self.run(&[format!("--screenshot={}", path.display()), format!("--window-size=1400,{height}")], url);
        let png = std::fs::read(path).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} is {} bytes", path.display(), png.len());
    }
}

/// The rows of a table in a dumped DOM: each `<tr data-KIND="...">`'s key
/// and its cells' text.
fn rows(dom: &str, kind: &str) -> Vec<(String, Vec<String>)> {
    let marker = format!("<tr data-{kind}=\"");
    dom.split(&marker)
        .skip(1)
        .map(|rest| {
            let (key, rest) = rest.split_once('"').unwrap();
            let row = rest.split("</tr>").next().unwrap();
            let cells = row.split("<td").skip(1).map(|cell| text(cell.split_once('>').unwrap().1)).collect();
            (unescape(key), cells)
        })
        .collect()
}

/// The text of an HTML fragment: tags dropped, entities decoded.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(out.trim())
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// The newest value a chart's legend shows for `series`, if any yet.
fn legend_value(dom: &str, series: &str) -> Option<f64> {
    let (_, rest) = dom.split_once(&format!("data-series=\"{series}\">"))?;
    let value = text(rest.split("</li>").next()?);
    value.split_once(": ")?.1.split(' ').next()?.parse().ok()
}

/// The operator console in headless Chromium: the region's nodes and
/// their roles, charts with data, partners, corridors, remote regions,
/// settlement windows; the newest transfers, and one found by its id and
/// by its idempotency key. Screenshots of both pages go to `shots`.
fn console_in_a_real_browser(
    chromium: &str,
    certs: &Path,
    consoles: &std::collections::BTreeMap<u64, String>,
    shots: &Path,
) {
    let profile = tempfile::tempdir().unwrap();
    let origins: Vec<String> = consoles.values().map(|addr| format!("https://{addr}")).collect();
    let mut args = vec![profile.path().display().to_string()];
    for file in ["ca.pem", "operator-ops.pem", "operator-ops.key"] {
        args.push(certs.join(file).display().to_string());
    }
    args.extend(origins.iter().cloned());
    chromium_script(&std::iter::once("profile").chain(args.iter().map(String::as_str)).collect::<Vec<_>>());
    let browser = Browser { chromium: chromium.to_owned(), profile: profile.path().to_owned() };

    // The nodes, as node 1's console shows them: three members, one
    // leader, all healthy.
    let dom = browser.dom(&format!("{}/", origins[0]));
    assert!(dom.contains("<title>paymesh · us-west · node 1</title>"), "{dom}");
    let nodes = rows(&dom, "node");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let leaders: Vec<&String> = nodes.iter().filter(|(_, cells)| cells[2] == "leader").map(|(id, _)| id).collect();
    assert_eq!(leaders.len(), 1, "{nodes:?}");
    assert!(nodes.iter().all(|(_, cells)| cells[7] == "healthy"), "{nodes:?}");
    let leader: u64 = leaders[0].parse().unwrap();

    // The leader's console, once its charts have two samples: transfers
    // created and partner calls per second, and their latency.
    let overview = format!("https://{}/", consoles[&leader]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let dom = loop {
        let dom = browser.dom(&overview);
        let created = legend_value(&dom, "transfers created");
        let p99 = legend_value(&dom, "p99");
        if created.is_some_and(|v| v > 0.0) && p99.is_some_and(|ms| ms > 0.0 && ms < 10_000.0) {
            break dom;
        }
        assert!(Instant::now() < deadline, "no chart data in 90 s:\n{dom}");
        std::thread::sleep(Duration::from_secs(3));
    };
    let partners = rows(&dom, "partner");
    let wallet = partners.iter().find(|(id, _)| id == "paypal-us").unwrap_or_else(|| panic!("{partners:?}"));
    assert_eq!(wallet.1[1..3], ["payer".to_owned(), "active".to_owned()], "{wallet:?}");
    assert!(wallet.1[3].ends_with(" USD") && wallet.1[8].ends_with('%'), "{wallet:?}");
    let corridors = rows(&dom, "corridor");
    assert!(corridors.iter().any(|(id, _)| id == "USD:us-west->CNY:cn-east"), "{corridors:?}");
    let regions = rows(&dom, "region");
    let names: Vec<&str> = regions.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["ap-southeast", "cn-east"], "{regions:?}");
    assert!(regions.iter().all(|(_, cells)| cells[6] == "closed"), "breakers {regions:?}");
    let windows = rows(&dom, "window");
    assert!(windows.first().is_some_and(|(_, cells)| cells[2] == "open"), "{windows:?}");
    std::fs::create_dir_all(shots).unwrap();
    browser.screenshot(&overview, &shots.join("overview.png"), 1500);

    // The newest transfers, and one of them found by id and by key.
    let list = browser.dom(&format!("{overview}transfers"));
    let transfers = rows(&list, "transfer");
    assert!(transfers.len() >= 10, "{list}");
    let (id, cells) = transfers.iter().find(|(_, cells)| cells[7] == "committed").expect("a committed transfer");
    let key = &cells[2];
    let query = |q: &str| form_urlencoded::Serializer::new(String::new()).append_pair("q", q).finish();
    let by_id = rows(&browser.dom(&format!("{overview}transfers?{}", query(id))), "transfer");
    assert_eq!(by_id.iter().map(|(found, _)| found).collect::<Vec<_>>(), [id], "{by_id:?}");
    assert_eq!(&by_id[0].1[2], key);
    let by_key = rows(&browser.dom(&format!("{overview}transfers?{}", query(key))), "transfer");
    assert!(by_key.iter().any(|(found, _)| found == id), "{key}: {by_key:?}");
    let nothing = browser.dom(&format!("{overview}transfers?{}", query("no-such-key-<b>")));
    assert!(nothing.contains("no transfer under the idempotency key") && !nothing.contains("<b>"), "{nothing}");
    browser.screenshot(&format!("{overview}transfers?{}", query(key)), &shots.join("transfers.png"), 700);
    println!(
        "a real Chromium loaded the console of us-west's leader (node {leader}): {} transfers listed, {id} found \
         by id and key; screenshots in {}",
        transfers.len(),
        shots.display()
    );
}

/// A child process killed when dropped, and with it (when `tree` names
/// the directory their command lines mention) the processes it started.
struct Killed(Child, Option<PathBuf>);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(tree) = &self.1 {
            // The demo's nodes, were the demo killed before it stopped them.
            let _ = Command::new("pkill").arg("-f").arg(tree).status();
        }
    }
}

/// A test's directory whose `demo.log`, `prometheus.log` and us-west node 1's log are printed
/// (their last lines) if the test fails, before the directory goes.
struct LogsOnPanic(tempfile::TempDir);

impl LogsOnPanic {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in ["demo.log", "prometheus.log", "demo/us-west/node-1.log"] {
                let text = std::fs::read_to_string(self.0.path().join(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- the last lines of {name}:");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Wait, at most `within`, for `ready` to give a value.
async fn wait_for<T>(what: &str, within: Duration, mut ready: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = ready().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prometheus' HTTP query API.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<serde_json::Value> {
        let response = self.http.get(format!("{}{path}", self.base)).query(query).send().await.ok()?;
        serde_json::from_str(&response.text().await.ok()?).ok()
    }

    /// The instant vector of `expr`: each sample's labels and value.
    async fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let Some(answer) = self.get("/api/v1/query", &[("query", expr)]).await else { return Vec::new() };
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sample| (sample["metric"].clone(), sample["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }
}

/// The value of `key = "..."` in a node's configuration text.
fn config_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.trim().strip_prefix('=')?.trim().trim_matches('"').to_owned().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_and_a_real_browser_watch_the_demo_mesh() {
    prometheus_script("install");
    let chromium = chromium_script(&["install"]).trim().to_owned();
    let dir = LogsOnPanic(tempfile::tempdir().unwrap());
    let demo_dir = dir.path().join("demo");
    let demo_log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
    let mut demo = Killed(
        Command::new(env!("CARGO_BIN_EXE_paymesh"))
            .args(["demo", "--duration", DEMO_SECONDS, "--dir"])
            .arg(&demo_dir)
            .stdout(demo_log.try_clone().unwrap())
            .stderr(demo_log)
            .spawn()
            .unwrap(),
        Some(demo_dir.clone()),
    );
    // The demo writes its scrape configuration before it starts the nodes.
    let config = wait_for("the demo's prometheus.yml", Duration::from_secs(120), async || {
        std::fs::read_to_string(demo_dir.join("prometheus.yml")).ok()
    })
    .await;
    let config = config.replace("scrape_interval: 5s", "scrape_interval: 1s").replace(
        "evaluation_interval: 5s",
        &format!("evaluation_interval: 1s\nrule_files:\n  - {}", repo().join("deploy/monitoring/alerts.yml").display()),
    );
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, &config).unwrap();
    let port = free_port();
    let prometheus_log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(prometheus_log.try_clone().unwrap())
            .stderr(prometheus_log)
            .spawn()
            .expect("prometheus on PATH (scripts/prometheus.sh install puts it there)"),
        None,
    );
    let api = Api { http: reqwest::Client::new(), base: format!("http://127.0.0.1:{port}") };
    wait_for("Prometheus ready", Duration::from_secs(60), async || {
        api.http.get(format!("{}/-/ready", api.base)).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;

    // Once the mesh is up: one request the region's rules refuse, so the
    // refusal counter has a series whatever the demo's workload does.
    let us_west = demo_dir.join("us-west");
    let api_addrs = wait_for("us-west's node configurations", Duration::from_secs(60), async || {
        let addrs: std::collections::BTreeMap<u64, String> = (1..=3)
            .filter_map(|id| {
                let text = std::fs::read_to_string(us_west.join(format!("node-{id}.toml"))).ok()?;
                Some((id, config_value(&text, "api_listen")?))
            })
            .collect();
        (addrs.len() == 3).then_some(addrs)
    })
    .await;
    let region = LocalRegion::attach(&us_west.join("certs"), "us-west", "ops", api_addrs).unwrap();
    let wallet = region.partner("paypal-us").unwrap();
    let refused = wait_for("a quote below the corridor's minimum refused", Duration::from_secs(120), async || {
        let request = wire::CreateQuoteRequest {
            qr_payload: "usqr://shop/m0001".into(),
            amount: Some(wire::create_quote_request::Amount::SourceAmount(common::Money {
                amount: "0.01".into(),
                currency: "USD".into(),
            })),
            idempotency_key: String::new(),
        };
        wallet.create_quote(request).await.ok().filter(|answer| answer.reject_code != 0)
    })
    .await;
    assert_eq!(refused.reject_code, common::RejectCode::AmountBelowMinimum as i32);
    // The console: who it admits, here; what it shows, in a browser while
    // Prometheus is asked.
    let consoles: std::collections::BTreeMap<u64, String> = (1..=3)
        .map(|id| {
            let text = std::fs::read_to_string(us_west.join(format!("node-{id}.toml"))).unwrap();
            (id, console_addr(&text).unwrap_or_else(|| panic!("no [console] listen in {text}")))
        })
        .collect();
    console_admits_only_operators_and_only_reads(&us_west.join("certs"), &consoles[&1]).await;
    let browser = {
        let (certs, shots) = (us_west.join("certs"), Path::new(env!("CARGO_TARGET_TMPDIR")).join("console"));
        let consoles = consoles.clone();
        tokio::task::spawn_blocking(move || console_in_a_real_browser(&chromium, &certs, &consoles, &shots))
    };
    // The orchestrator's probes, on every node's metrics listener.
    let targets: Vec<&str> = config.split('"').filter(|part| part.starts_with("127.0.0.1:")).collect();
    assert_eq!(targets.len(), 9, "{config}");
    for target in &targets {
        let ready = api.http.get(format!("http://{target}/readyz")).send().await.unwrap();
        assert_eq!(ready.status().as_u16(), 200, "{target}");
        assert!(ready.text().await.unwrap().starts_with("ready: leader is node"));
        let live = api.http.get(format!("http://{target}/healthz")).send().await.unwrap();
        assert_eq!(live.status().as_u16(), 200, "{target}");
        let wrong = api.http.post(format!("http://{target}/metrics")).send().await.unwrap();
        assert_eq!(wrong.status().as_u16(), 405, "{target}");
    }

    // Every documented series, from every region, while the workload runs.
    let documented = documented();
    let regions = ["ap-southeast", "cn-east", "us-west"];
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut missing = Vec::new();
        for (name, kind) in &documented {
            let series = if kind == "histogram" { format!("{name}_count") } else { name.clone() };
            let found = api.query(&format!("count by (region) ({series})")).await;
            let seen: BTreeSet<String> =
                found.iter().filter_map(|(labels, _)| labels["region"].as_str().map(str::to_owned)).collect();
            // Leader-only, per-follower, refusal and corridor series come
            // from some regions (cn-east has no wallet, so no corridor);
            // every other series from all three.
            let some_region = name.contains("commit_index")
                || name.contains("quorum_ack")
                || name.contains("replication_lag")
                || name.contains("rejections")
                || name.contains("corridor");
            let enough = if some_region { !seen.is_empty() } else { seen.len() == regions.len() };
            if !enough {
                missing.push(format!("{series} (from {seen:?})"));
            }
        }
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let up = api.query("up").await;
            let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
            panic!("documented but not scraped: {missing:?}\nup: {up:?}\nPrometheus' log:\n{log}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Values that make sense.
    let leaders = api.query(r#"sum by (region) (paymesh_raft_role{role="leader"})"#).await;
    assert_eq!(leaders.len(), 3, "{leaders:?}");
    assert!(leaders.iter().all(|(_, n)| n.round() as i64 == 1), "one leader per region: {leaders:?}");
    let up = api.query(r#"sum(up{job="paymesh"})"#).await;
    assert_eq!(up[0].1.round() as i64, 9, "every node scraped: {up:?}");
    let paying = wait_for("transfers created per second", Duration::from_secs(30), async || {
        let rate = api.query("sum(rate(paymesh_corridor_transfers_total[15s]))").await;
        rate.first().map(|(_, v)| *v).filter(|v| *v > 1.0)
    })
    .await;
    let corridors = api.query("sum by (corridor) (paymesh_corridor_transfers_total)").await;
    assert!(corridors.iter().any(|(l, _)| l["corridor"] == "USD:us-west->CNY:cn-east"), "{corridors:?}");
    let refusals =
        api.query(r#"paymesh_partner_rejections_total{partner="paypal-us",code="AmountBelowMinimum"}"#).await;
    assert!(refusals.iter().map(|(_, v)| v).sum::<f64>() >= 1.0, "{refusals:?}");
    let syncs =
        api.query("histogram_quantile(0.99, sum by (le) (rate(paymesh_log_sync_duration_seconds_bucket[30s])))").await;
    assert!(syncs[0].1 > 0.0 && syncs[0].1 < 2.0, "fsync p99 {syncs:?}");
    let p99 = api
        .query(
            r#"histogram_quantile(0.99, sum by (le) (rate(paymesh_partner_request_duration_seconds_bucket{method=~"CreateTransfers|CreateTransfer|CreatePayment|CreateQuote"}[30s])))"#,
        )
        .await;
    assert!(p99[0].1 > 0.0 && p99[0].1 < 10.0, "payments p99 {p99:?}");
    let memory = api.query("min(process_resident_memory_bytes)").await;
    assert!(memory[0].1 > 10e6 && memory[0].1 < 8e9, "{memory:?}");
    let applied = api.query("min(paymesh_raft_applied_index)").await;
    assert!(applied[0].1 > 10.0, "{applied:?}");
    let protocols = api.query("max(paymesh_region_protocol) - min(paymesh_node_protocol_supported)").await;
    assert!(protocols[0].1 <= 0.0, "no node's release is behind its region's protocol: {protocols:?}");
    let lag = api.query("max(paymesh_raft_replication_lag_entries)").await;
    assert!(lag[0].1 < 10_000.0, "{lag:?}");
    let errors = api.query("paymesh:partner_server_error_ratio:rate5m").await;
    assert!(errors.len() >= 2 && errors.iter().all(|(_, ratio)| *ratio < 0.05), "server-side errors {errors:?}");
    // Every rule evaluates against the real series without an error, and
    // none of the paging alerts fires on a healthy mesh.
    let rules = api.get("/api/v1/rules", &[]).await.unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    let all: Vec<&serde_json::Value> = groups.iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert_eq!(all.len(), 13, "{rules}");
    for rule in &all {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let firing: Vec<&serde_json::Value> =
        all.iter().filter(|r| r["type"] == "alerting" && r["state"] == "firing").copied().collect();
    assert!(firing.is_empty(), "alerts firing on a healthy mesh: {firing:?}");
    println!("a real Prometheus scraped {} documented series from 9 nodes; {paying:.0} transfers/s", documented.len());
    browser.await.unwrap();
    // The demo ends by itself and finds every invariant held, metrics
    // served and scraped all along.
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not end");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let log = std::fs::read_to_string(dir.path().join("demo.log")).unwrap();
    assert!(status.success() && log.contains("all invariants hold"), "{log}");
}

/// `paymesh start --log-format json`: every line of a node's log is a JSON
/// object, and a line logged while a payment is answered carries the
/// partner, the transfer and the trace id of the spans it happened in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_partner_the_transfer_and_the_trace() {
    use paymesh_harness::mesh::LocalMesh;
    use paymesh_harness::world;

    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_paymesh"));
    let regions: Vec<_> = world::regions().into_iter().filter(|(name, _)| *name == "us-west").collect();
    let mut mesh = LocalMesh::plan(
        dir.path(),
        exe,
        &regions,
        3,
        "heartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600",
        paymesh_harness::wan::WanSettings::default(),
        &[("RUST_LOG", "info,openraft=warn,paymesh_node::partner_service=debug")],
    )
    .await
    .unwrap();
    mesh.regions.get_mut("us-west").unwrap().start_args = vec!["--log-format".into(), "json".into()];
    mesh.launch().await.unwrap();
    let wallets: Vec<_> = world::WALLETS.into_iter().filter(|w| w.0 == "us-west").collect();
    let merchants: Vec<_> = world::MERCHANTS.into_iter().filter(|m| m.0 == "us-west").collect();
    world::configure_world(&mesh.regions, &wallets, &merchants, &world::RATES).await.unwrap();
    let region = mesh.region("us-west").unwrap();
    let wallet = region.partner("paypal-us").unwrap();
    let request = wire::CreatePaymentRequest {
        idempotency_key: "json-log-1".into(),
        qr_payload: "usqr://shop/m0001".into(),
        amount: Some(wire::create_payment_request::Amount::SourceAmount(common::Money {
            amount: "12.34".into(),
            currency: "USD".into(),
        })),
        payer: Some(wire::PayerDetails {
            name: "Alice Example".into(),
            account: "acct-42".into(),
            reference: "order-42".into(),
        }),
        ..Default::default()
    };
    let paid = wallet.create_payment(request).await.unwrap().transfer.expect("a transfer");
    let leader = region.wait_leader(Duration::from_secs(10)).await.unwrap();
    let log = std::fs::read_to_string(&region.nodes[&leader].log).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.len() > 5, "{log}");
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string() && l["target"].is_string()));
    let answered = lines
        .iter()
        .find(|l| l["message"] == "transfer answered" && l["span"]["transfer"] == paid.transfer_id.as_str())
        .unwrap_or_else(|| panic!("no line about {} in {log}", paid.transfer_id));
    assert_eq!(answered["span"]["partner"], "paypal-us", "{answered}");
    let trace = answered["span"]["trace_id"].as_str().unwrap();
    assert!(trace.len() == 32 && trace.chars().all(|c| c.is_ascii_hexdigit()) && trace != "0".repeat(32), "{answered}");
    mesh.stop().unwrap();
}
