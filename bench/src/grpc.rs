//! gRPC: a unary hello call on one core, bare tonic against tonic with
//! clientgone's gRPC layer (`DisconnectLayer::grpc` over
//! `TrackedListener::into_incoming`), side by side under h2load; then the
//! same call through `clientgone proxy --grpc-descriptor` in front of the
//! bare server. CPU time per call from `/proc`, and instructions per call
//! under callgrind (deterministic where CPU time on a VM is not).
//!
//! The servers are the demo's generated `clientgone.demo.v1.Demo` with a
//! `Wait` that answers at once, so a call costs only what the stack does.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clientgone::{DisconnectLayer, Metrics, TrackedListener};
use clientgone_agent::demo::grpc::{self, DemoService, pb};
use tonic::{Request, Response, Status, Streaming};

use crate::agent::AgentProcess;
use crate::servers::{ChildProcess, announce, exit_with_launcher};

/// Flags of `grpc`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Args {
    /// Calls per h2load run.
    #[arg(long, default_value_t = 200_000)]
    pub calls: u32,
    /// Interleaved rounds (bare, layer, proxy in turn).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// h2load connections (`-c`).
    #[arg(long, default_value_t = 8)]
    pub connections: u32,
    /// h2load streams per connection (`-m`).
    #[arg(long, default_value_t = 8)]
    pub streams: u32,
    /// The CPU the server under test is pinned to; h2load gets the other.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: u32,
    /// Calls counted under callgrind (0: skip the instruction counts).
    #[arg(long, default_value_t = 2_000)]
    pub callgrind_calls: u32,
}

/// Flags of the hidden `grpc-serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// `bare` (tonic alone) or `layer` (tonic with clientgone's gRPC layer).
    #[arg(long)]
    pub stack: String,
}

/// The demo's service with a `Wait` that answers at once.
#[derive(Clone, Copy)]
struct Hello;

#[tonic::async_trait]
impl pb::demo_server::Demo for Hello {
    async fn wait(
        &self,
        _request: Request<pb::WaitRequest>,
    ) -> Result<Response<pb::WaitReply>, Status> {
        Ok(Response::new(pb::WaitReply {
            message: "Hello, World!".into(),
        }))
    }

    type TicksStream = <DemoService as pb::demo_server::Demo>::TicksStream;
    async fn ticks(
        &self,
        request: Request<pb::TicksRequest>,
    ) -> Result<Response<Self::TicksStream>, Status> {
        pb::demo_server::Demo::ticks(&DemoService, request).await
    }

    async fn upload(
        &self,
        request: Request<Streaming<pb::Chunk>>,
    ) -> Result<Response<pb::UploadReply>, Status> {
        pb::demo_server::Demo::upload(&DemoService, request).await
    }

    type EchoStream = <DemoService as pb::demo_server::Demo>::EchoStream;
    async fn echo(
        &self,
        request: Request<Streaming<pb::Chunk>>,
    ) -> Result<Response<Self::EchoStream>, Status> {
        pb::demo_server::Demo::echo(&DemoService, request).await
    }
}

/// Serves `Hello` on one thread (tokio's current-thread runtime, as
/// `clientgone`'s binary runs), until the launcher goes away.
pub fn serve(args: &ServeArgs) -> Result<(), String> {
    exit_with_launcher();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the runtime: {e}"))?;
    runtime.block_on(async {
        let service = pb::demo_server::DemoServer::new(Hello);
        match args.stack.as_str() {
            "bare" => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| e.to_string())?;
                announce(listener.local_addr().map_err(|e| e.to_string())?);
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(incoming)
                    .await
                    .map_err(|e| e.to_string())
            }
            "layer" => {
                let registry = prometheus::Registry::new();
                let metrics = Metrics::new(&registry).map_err(|e| e.to_string())?;
                let listener = TrackedListener::bind("127.0.0.1:0", &metrics)
                    .await
                    .map_err(|e| e.to_string())?;
                announce(listener.local_addr().map_err(|e| e.to_string())?);
                tonic::transport::Server::builder()
                    .layer(DisconnectLayer::new(metrics).grpc(grpc::methods()))
                    .add_service(service)
                    .serve_with_incoming(listener.into_incoming())
                    .await
                    .map_err(|e| e.to_string())
            }
            other => Err(format!("no stack '{other}': bare or layer")),
        }
    })
}

/// A `WaitRequest{}` framed as one gRPC message, for h2load's `-d`.
fn request_file(dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join("wait.grpc");
    // Five bytes of framing (not compressed, length 0): the empty message.
    std::fs::write(&path, [0u8, 0, 0, 0, 0]).map_err(|e| e.to_string())?;
    Ok(path)
}

fn descriptor_file(dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join("demo.bin");
    std::fs::write(&path, grpc::DESCRIPTOR_SET).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Runs h2load against `addr`; returns the calls that succeeded.
fn h2load(args: &Args, addr: SocketAddr, body: &Path, calls: u32, cpu: u32) -> Result<u64, String> {
    let out = Command::new("taskset")
        .arg("-c")
        .arg(cpu.to_string())
        .arg("h2load")
        .args(["-n", &calls.to_string()])
        .args(["-c", &args.connections.to_string()])
        .args(["-m", &args.streams.to_string()])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("http://{addr}/clientgone.demo.v1.Demo/Wait"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("h2load (Debian package nghttp2-client): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "requests: 200000 total, 200000 started, 200000 done, 200000 succeeded, 0 failed, …"
    let succeeded = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| {
            l.split(',')
                .find(|p| p.trim().ends_with("succeeded"))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .ok_or_else(|| format!("cannot read h2load's result:\n{text}"))?;
    if succeeded != u64::from(calls) {
        return Err(format!(
            "h2load: {succeeded} of {calls} calls succeeded:\n{text}"
        ));
    }
    Ok(succeeded)
}

fn cpu_time(pid: u32) -> Result<Duration, String> {
    crate::servers::process_cpu_time(pid)
}

struct Sample {
    us_per_call: f64,
}

/// CPU µs per call of the process `pid` while h2load sends `calls` to `addr`.
fn measure(args: &Args, pid: u32, addr: SocketAddr, body: &Path) -> Result<Sample, String> {
    let load_cpu = u32::from(args.server_cpu == 0);
    let before = cpu_time(pid)?;
    let calls = h2load(args, addr, body, args.calls, load_cpu)?;
    let used = cpu_time(pid)? - before;
    Ok(Sample {
        us_per_call: used.as_secs_f64() * 1e6 / calls as f64,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The whole part: side-by-side CPU per call, then instructions per call.
pub fn run(args: &Args) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("clientgone-bench-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let body = request_file(&dir)?;
    let descriptor = descriptor_file(&dir)?;
    let cpu = Some(args.server_cpu);
    let bare = ChildProcess::spawn(&["grpc-serve", "--stack", "bare"], cpu, "bare tonic")?;
    let layer = ChildProcess::spawn(&["grpc-serve", "--stack", "layer"], cpu, "tonic + layer")?;
    // The proxy on the server CPU, in front of a second bare tonic on the other.
    let upstream = ChildProcess::spawn(
        &["grpc-serve", "--stack", "bare"],
        Some(u32::from(args.server_cpu == 0)),
        "upstream tonic",
    )?;
    let upstream_url = format!("h2c://{}", upstream.addr);
    let descriptor_arg = descriptor.display().to_string();
    let proxy = AgentProcess::spawn(
        args.server_cpu,
        &[
            "proxy",
            "--upstream",
            &upstream_url,
            "--grpc-descriptor",
            &descriptor_arg,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )?;
    // Warm up each: connections, allocator, the layer's children.
    for addr in [bare.addr, layer.addr, proxy.addr] {
        h2load(args, addr, &body, 20_000, u32::from(args.server_cpu == 0))?;
    }
    let (mut b, mut l, mut p, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        eprintln!("grpc: round {} of {}", round + 1, args.rounds);
        let sb = measure(args, bare.pid(), bare.addr, &body)?;
        let sl = measure(args, layer.pid(), layer.addr, &body)?;
        let sp = measure(args, proxy.pid(), proxy.addr, &body)?;
        ratios.push(sl.us_per_call / sb.us_per_call);
        b.push(sb.us_per_call);
        l.push(sl.us_per_call);
        p.push(sp.us_per_call);
    }
    drop((bare, layer, proxy, upstream));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### gRPC: a unary call on one core (h2load -n {} -c {} -m {}, {} interleaved rounds)\n",
        args.calls, args.connections, args.streams, args.rounds
    );
    let _ = writeln!(out, "| server | CPU µs per call (median) | × bare tonic |");
    let _ = writeln!(out, "|---|---:|---:|");
    let (mb, ml, mp) = (median(b.clone()), median(l.clone()), median(p.clone()));
    let _ = writeln!(out, "| bare tonic | {mb:.2} | 1.00 |");
    let _ = writeln!(
        out,
        "| tonic + `DisconnectLayer::grpc` | {ml:.2} | {:.3} (paired rounds: {}) |",
        median(ratios.clone()),
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "| `clientgone proxy --grpc-descriptor` in front of bare tonic (the proxy's CPU alone) | {mp:.2} | {:.2} |",
        mp / mb
    );
    if args.callgrind_calls > 0 {
        let _ = writeln!(
            out,
            "\n#### Instructions per call (callgrind, the server alone, {} calls over 1 connection)\n",
            args.callgrind_calls
        );
        let _ = writeln!(out, "| server | instructions per call | × bare tonic |");
        let _ = writeln!(out, "|---|---:|---:|");
        let ib = instructions_per_call(args, "bare", &body, &dir)?;
        let il = instructions_per_call(args, "layer", &body, &dir)?;
        let _ = writeln!(out, "| bare tonic | {ib:.0} | 1.000 |");
        let _ = writeln!(
            out,
            "| tonic + `DisconnectLayer::grpc` | {il:.0} | {:.3} |",
            il / ib
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(out)
}

/// Instructions of one call: two callgrind counts, `callgrind_calls` apart.
fn instructions_per_call(args: &Args, stack: &str, body: &Path, dir: &Path) -> Result<f64, String> {
    let n = args.callgrind_calls;
    let short = callgrind_total(args, stack, body, dir, n)?;
    let long = callgrind_total(args, stack, body, dir, 2 * n)?;
    let per_call = long.saturating_sub(short) as f64 / f64::from(n);
    eprintln!("  {stack:<6} {per_call:>9.0} instructions/call");
    Ok(per_call)
}

fn callgrind_total(
    args: &Args,
    stack: &str,
    body: &Path,
    dir: &Path,
    calls: u32,
) -> Result<u64, String> {
    let out = dir.join(format!("callgrind.{stack}.{calls}"));
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg(args.server_cpu.to_string())
        .arg("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(["grpc-serve", "--stack", stack])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("valgrind: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .map_err(|e| e.to_string())?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("the server under callgrind said {line:?}"))?;
    let one = Args {
        connections: 1,
        streams: 1,
        ..*args
    };
    let driven = h2load(&one, addr, body, calls, u32::from(args.server_cpu == 0));
    // Closing stdin ends the server; callgrind writes its count on exit.
    drop(child.stdin.take());
    let _ = child.wait();
    driven?;
    let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals: ")
                .or_else(|| l.strip_prefix("summary: "))
        })
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no total in {}", out.display()))
}
