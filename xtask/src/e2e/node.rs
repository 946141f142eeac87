//! The node backend (`cargo xtask e2e --backend node`): a one-node cluster
//! of processes on this machine — etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, containerd and a kubelet — on
//! which the chart installs as a user would install it: two webhook pods from
//! the image `cargo xtask image` writes, its Service, self-signed certificates.
//!
//! Networking stays inside the machine: a bridge (`portcullis0`,
//! 10.244.0.1/24) that this backend creates and the CNI bridge plugin
//! attaches pods to (host-local IPAM, no masquerading, no iptables rules).
//! Every component listens on the bridge address or on loopback. There is no
//! kube-proxy: the API server reaches webhooks through the Service's ready
//! endpoints (`--enable-aggregator-routing`, which makes its service
//! resolver pick an endpoint rather than the ClusterIP), and the pods reach
//! the API server at the bridge address (`KUBERNETES_SERVICE_HOST`, set
//! through the chart's `server.extraEnv`).
//!
//! Everything started or created is undone when the run ends, however it
//! ends: [`Node`]'s drop stops the kubelet and containerd, kills what
//! containers are left, unmounts what they mounted, removes the network
//! namespaces and the bridge.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::gobuild::{Binaries, NodeBinaries};
use super::process::Service;
use super::{Helm, NAMESPACE, RELEASE, Timer, pki, wait_for_port};
use crate::{image, run_cmd};

/// The bridge and its address: the node's IP, where the API server listens.
pub const BRIDGE: &str = "portcullis0";
pub const NODE_IP: &str = "10.244.0.1";
const POD_SUBNET: &str = "10.244.0.0/24";
/// The pause image (the pod sandbox), written from the static pause program.
pub const PAUSE_IMAGE: &str = "docker.io/portcullis/pause:e2e";
const NODE_NAME: &str = "portcullis-node";

/// Debian packages the node needs.
const PACKAGES: [&str; 4] = ["containerd", "runc", "containernetworking-plugins", "iptables"];
const CNI_BIN: &str = "/usr/lib/cni";

/// Installs the node's Debian packages when missing (as root on Debian, as
/// `wasm.rs` does for the wasm toolchain); otherwise says what is missing.
pub fn ensure_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = [("containerd", "containerd"), ("runc", "runc"), ("ctr", "containerd")]
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, package)| *package)
        .chain(Some("containernetworking-plugins").filter(|_| !Path::new(CNI_BIN).join("bridge").is_file()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    if !root || !Path::new("/etc/debian_version").exists() {
        bail!("the node backend needs root and the Debian packages {}", PACKAGES.join(" "));
    }
    eprintln!("e2e: installing {}", PACKAGES.join(" "));
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(bin)).find(|p| p.is_file()))
        .or_else(|| ["/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(bin)).find(|p| p.is_file()))
}

/// The running node; dropping it tears everything down.
pub struct Node {
    work: PathBuf,
    pub kubeconfig: PathBuf,
    pub apiserver_port: u16,
    socket: PathBuf,
    netns_before: BTreeSet<String>,
    bridge: bool,
    // Dropped in this order: last started, first stopped.
    kubelet: Option<Service>,
    scheduler: Option<Service>,
    controller_manager: Option<Service>,
    containerd: Option<Service>,
    apiserver: Option<Service>,
    etcd: Option<Service>,
}

impl Node {
    /// The processes, for logs after a failure.
    pub fn services(&mut self) -> Vec<&mut Service> {
        [
            &mut self.kubelet,
            &mut self.scheduler,
            &mut self.controller_manager,
            &mut self.containerd,
            &mut self.apiserver,
            &mut self.etcd,
        ]
        .into_iter()
        .filter_map(Option::as_mut)
        .collect()
    }

    /// `ctr` against this node's containerd, in the CRI namespace.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket).args(["--namespace", "k8s.io"]);
        cmd
    }
}

/// Starts the node: bridge, etcd, API server, controllers, containerd with
/// `images` imported, kubelet; returns once the node is Ready.
pub fn start(
    work: &Path,
    bins: &Binaries,
    progs: &NodeBinaries,
    images: &[PathBuf],
    e2e: &dyn Fn(&Path, &[&str]) -> Command,
    timer: &mut Timer,
) -> anyhow::Result<Node> {
    let work = work.join("node");
    for dir in ["logs", "pki", "cni/net.d", "cni/ipam", "containerd", "kubelet"] {
        std::fs::create_dir_all(work.join(dir))?;
    }
    let mut node = Node {
        work: work.clone(),
        kubeconfig: work.join("kubeconfig"),
        apiserver_port: super::free_port()?,
        socket: work.join("containerd/containerd.sock"),
        netns_before: netns(),
        bridge: false,
        kubelet: None,
        scheduler: None,
        controller_manager: None,
        containerd: None,
        apiserver: None,
        etcd: None,
    };

    // The bridge first: the API server and the kubelet listen on its address.
    if Command::new("ip").args(["link", "show", BRIDGE]).output().is_ok_and(|o| o.status.success()) {
        bail!("a network interface {BRIDGE} exists already (another node backend running, or one that was killed?)");
    }
    run_cmd(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]))?;
    node.bridge = true;
    run_cmd(Command::new("ip").args(["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE]))?;
    run_cmd(Command::new("ip").args(["link", "set", BRIDGE, "up"]))?;

    let pki = pki::generate(&work.join("pki"), &[NODE_IP])?;
    pki::write_kubeconfig(&node.kubeconfig, &format!("https://{NODE_IP}:{}", node.apiserver_port), &pki)?;
    let logs = work.join("logs");

    let etcd_port = super::free_port()?;
    let mut etcd = Service::start(
        "etcd",
        &super::etcd_cmd(&bins.etcd, &work, etcd_port, super::free_port()?),
        &logs.join("etcd.log"),
    )?;
    wait_for_port(&mut etcd, etcd_port, Duration::from_secs(60))?;
    node.etcd = Some(etcd);
    let mut apiserver = super::apiserver_cmd(&bins.kube_apiserver, &work, &pki, etcd_port, node.apiserver_port);
    apiserver
        .arg(format!("--bind-address={NODE_IP}"))
        .arg(format!("--advertise-address={NODE_IP}"))
        .arg("--endpoint-reconciler-type=lease")
        .arg("--enable-aggregator-routing=true")
        .arg("--anonymous-auth=false")
        // `kubectl logs` and the like, for a look after a failure.
        .arg("--kubelet-preferred-address-types=InternalIP")
        .arg(format!("--kubelet-client-certificate={}", pki.admin_cert.display()))
        .arg(format!("--kubelet-client-key={}", pki.admin_key.display()))
        .env("NO_PROXY", format!("127.0.0.1,localhost,{NODE_IP},{POD_SUBNET},.svc"));
    node.apiserver = Some(Service::start("kube-apiserver", &apiserver, &logs.join("kube-apiserver.log"))?);
    run_cmd(&mut e2e(&node.kubeconfig, &["wait-ready", "--timeout", "120"]))?;
    timer.step("node: etcd and kube-apiserver up");

    let mut cm = Command::new(&progs.kube_controller_manager);
    cm.arg(format!("--kubeconfig={}", node.kubeconfig.display()))
        .arg(format!("--service-account-private-key-file={}", pki.sa_key.display()))
        .arg(format!("--root-ca-file={}", pki.server_ca.display()))
        .arg("--use-service-account-credentials=false")
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", super::free_port()?))
        // No pod CIDRs to allocate (host-local IPAM has the subnet), no cloud.
        .arg("--allocate-node-cidrs=false")
        .arg("--configure-cloud-routes=false")
        .arg("--v=1");
    node.controller_manager = Some(Service::start("kube-controller-manager", &cm, &logs.join("kcm.log"))?);
    let mut scheduler = Command::new(&progs.kube_scheduler);
    scheduler
        .arg(format!("--kubeconfig={}", node.kubeconfig.display()))
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", super::free_port()?))
        .arg("--v=1");
    node.scheduler = Some(Service::start("kube-scheduler", &scheduler, &logs.join("scheduler.log"))?);

    // containerd with the CRI plugin, this run's CNI config and pause image.
    let config = work.join("containerd/config.toml");
    std::fs::write(&config, containerd_config(&work))?;
    std::fs::write(work.join("cni/net.d/10-portcullis.conflist"), cni_config(&work))?;
    let mut containerd = Command::new("containerd");
    containerd.arg("--config").arg(&config);
    node.containerd = Some(Service::start("containerd", &containerd, &logs.join("containerd.log"))?);
    wait_for_socket(&node.socket, Duration::from_secs(30))?;
    for image in images {
        run_cmd(node.ctr().args(["images", "import"]).arg(image))?;
    }
    timer.step("node: controllers, containerd, images imported");

    let kubelet_config = work.join("kubelet/config.yaml");
    std::fs::write(&kubelet_config, kubelet_config_yaml(&node.socket, &pki))?;
    let mut kubelet = Command::new(&progs.kubelet);
    kubelet
        .arg(format!("--config={}", kubelet_config.display()))
        .arg(format!("--kubeconfig={}", node.kubeconfig.display()))
        .arg(format!("--root-dir={}", work.join("kubelet/root").display()))
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg(format!("--node-ip={NODE_IP}"))
        .arg("--v=1");
    node.kubelet = Some(Service::start("kubelet", &kubelet, &logs.join("kubelet.log"))?);
    wait_node_ready(&node, e2e, Duration::from_secs(120))?;
    timer.step("node: kubelet registered, node Ready");
    Ok(node)
}

fn wait_for_socket(socket: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!("containerd did not create {} within {timeout:?}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn wait_node_ready(node: &Node, e2e: &dyn Fn(&Path, &[&str]) -> Command, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = e2e(
            &node.kubeconfig,
            &["get", "--api-version", "v1", "--kind", "Node", "--pointer", "/status/conditions", NODE_NAME],
        )
        .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Ok(conditions) = serde_json::from_str::<serde_json::Value>(&text)
            && conditions.as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {NODE_NAME} not Ready within {timeout:?}; conditions: {text}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// containerd's config: everything under the run directory, the CRI plugin
/// with this run's CNI config and pause image, cgroupfs, and no negative
/// `oom_score_adj` (the VM lacks CAP_SYS_RESOURCE).
fn containerd_config(work: &Path) -> String {
    let dir = work.join("containerd");
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = dir.join("containerd.sock").display(),
        cni = work.join("cni/net.d").display(),
    )
}

/// The pod network: pods on the bridge, addresses from host-local IPAM
/// (state under the run directory), the bridge's address as the gateway,
/// no masquerading (no iptables rules; nothing leaves the machine).
fn cni_config(work: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "portcullis-e2e",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    "dataDir": work.join("cni/ipam").display().to_string(),
                },
            },
            {"type": "loopback"},
        ],
    })
    .to_string()
}

/// The kubelet's configuration for this VM: cgroup v1 (allowed explicitly),
/// cgroupfs, no QoS cgroup tree or node allocatable enforcement, no
/// iptables chains, no eviction on a busy disk, its API on the node address.
fn kubelet_config_yaml(socket: &Path, pki: &pki::Pki) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{socket}
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
makeIPTablesUtilChains: false
oomScoreAdj: 0
localStorageCapacityIsolation: false
evictionHard: {{"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"}}
imageGCHighThresholdPercent: 100
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: "{client_ca}"}}
authorization:
  mode: AlwaysAllow
resolvConf: ""
clusterDomain: cluster.local
registerNode: true
serializeImagePulls: false
"#,
        socket = socket.display(),
        client_ca = pki.client_ca.display(),
    )
}

/// Names in /var/run/netns (CNI's pod network namespaces live there).
fn netns() -> BTreeSet<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Mount points under `dir` (deepest first), from /proc/self/mountinfo.
fn mounts_under(dirs: &[&Path]) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| dirs.iter().any(|d| Path::new(p).starts_with(d)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    points
}

impl Drop for Node {
    fn drop(&mut self) {
        eprintln!("e2e: tearing the node down");
        // The kubelet first, so it does not restart what is stopped next.
        drop(self.kubelet.take());
        if self.containerd.is_some() {
            let tasks = self.ctr().args(["tasks", "list", "--quiet"]).output();
            for id in tasks.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default().lines() {
                let _ = self.ctr().args(["tasks", "kill", "--signal", "SIGKILL", id]).output();
            }
            std::thread::sleep(Duration::from_millis(500));
            for id in self
                .ctr()
                .args(["tasks", "list", "--quiet"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .lines()
            {
                let _ = self.ctr().args(["tasks", "delete", "--force", id]).output();
            }
        }
        drop(self.containerd.take());
        // containerd-shims outlive containerd by design: stop this run's.
        let state = self.work.join("containerd");
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for entry in procs.flatten() {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.starts_with("/usr/bin/containerd-shim") && cmdline.contains(&*state.to_string_lossy()) {
                    let _ = Command::new("kill").arg("-KILL").arg(entry.file_name()).output();
                }
            }
        }
        drop(self.scheduler.take());
        drop(self.controller_manager.take());
        drop(self.apiserver.take());
        drop(self.etcd.take());
        for point in mounts_under(&[&self.work, Path::new("/run/containerd"), Path::new("/var/run/netns")]) {
            let _ = Command::new("umount").arg("--lazy").arg(&point).output();
        }
        for name in netns().difference(&self.netns_before) {
            let _ = Command::new("ip").args(["netns", "delete", name]).output();
        }
        if self.bridge {
            let _ = Command::new("ip").args(["link", "delete", BRIDGE]).output();
        }
        let left = mounts_under(&[&self.work]);
        if !left.is_empty() {
            eprintln!("e2e: still mounted after teardown: {}", left.join(", "));
        }
    }
}

/// The pause image: the static pause program as the whole image.
pub fn pause_image(out: &Path, pause: &Path) -> anyhow::Result<image::Written> {
    let mut entries = image::base_entries();
    entries.push(image::Entry::file("/pause", std::fs::read(pause)?, 0o755));
    let config = image::Config {
        user: "65535:65535".into(),
        entrypoint: vec!["/pause".into()],
        cmd: Vec::new(),
        exposed_ports: Vec::new(),
    };
    image::write(out, PAUSE_IMAGE, entries, &config)
}

/// `helm install` values of the node backend: the e2e values, the image the
/// node has (never pulled), and the API server at the node's address.
pub fn install_args(port: u16) -> Vec<String> {
    [
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "server.extraEnv[0].name=KUBERNETES_SERVICE_HOST",
        "--set",
        &format!("server.extraEnv[0].value={NODE_IP}"),
        "--set",
        "server.extraEnv[1].name=KUBERNETES_SERVICE_PORT",
        "--set-string",
        &format!("server.extraEnv[1].value={port}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Runs the suite on a node: the chart installed with its own webhook
/// wiring (Service, self-signed certificates, two replicas), the case files,
/// the pods' security settings read back, uninstall.
pub fn run(
    root: &Path,
    options: &super::Options,
    bins: &Binaries,
    progs: &NodeBinaries,
    timer: &mut Timer,
) -> anyhow::Result<()> {
    ensure_packages()?;
    let images = root.join("target/image");
    let webhook = image::webhook_image(root, &images.join("webhook-server-e2e.oci.tar"), image::WEBHOOK_IMAGE, true)?;
    let pause = pause_image(&images.join("pause.oci.tar"), &progs.pause)?;
    run_cmd(crate::cargo().args(["test", "--package", "e2e", "--no-run"]))?;
    run_cmd(crate::cargo().args(["build", "--package", "e2e", "--bin", "portcullis-e2e"]))?;
    timer.step("images (webhook-server, pause), e2e runner");
    let e2e_bin = root.join("target/debug/portcullis-e2e");
    let runs = root.join("target/e2e");
    super::remove_finished_runs(&runs);
    let work = runs.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(work.join("helm"))?;
    let e2e = |kubeconfig: &Path, args: &[&str]| {
        let mut cmd = Command::new(&e2e_bin);
        cmd.args(args).env("PORTCULLIS_E2E_KUBECONFIG", kubeconfig);
        cmd
    };

    let mut node = start(&work, bins, progs, &[pause.path.clone(), webhook.path.clone()], &e2e, timer)?;
    let outcome = on_node(root, options, &node, &Helm::new(&bins.helm, &work.join("helm")), &e2e, timer);
    if outcome.is_err() {
        for service in node.services() {
            service.print_tail(15);
        }
    }
    drop(node);
    timer.step("node teardown");
    outcome
}

fn on_node(
    root: &Path,
    options: &super::Options,
    node: &Node,
    helm: &Helm,
    e2e: &dyn Fn(&Path, &[&str]) -> Command,
    timer: &mut Timer,
) -> anyhow::Result<()> {
    let kubeconfig = &node.kubeconfig;
    let chart = root.join("charts/portcullis");
    let values = root.join("e2e/values-e2e.yaml");
    run_cmd(
        helm.cmd(kubeconfig)
            .args(["install", RELEASE])
            .arg(&chart)
            .args(["--namespace", NAMESPACE, "--create-namespace", "--values"])
            .arg(&values)
            .args(install_args(node.apiserver_port))
            .args(["--wait", "--timeout", "5m"]),
    )?;
    let ready = output(&mut e2e(
        kubeconfig,
        &[
            "get",
            "--api-version",
            "apps/v1",
            "--kind",
            "Deployment",
            "--namespace",
            NAMESPACE,
            "--pointer",
            "/status/readyReplicas",
            RELEASE_DEPLOYMENT,
        ],
    ))?;
    if ready.trim() != "2" {
        bail!("the chart's Deployment has {} ready replicas; expected 2", ready.trim());
    }
    eprintln!("e2e: the chart's two webhook pods are Ready (readiness probe on /readyz)");
    timer.step("chart installed on the node (Service, self-signed), 2 pods Ready");

    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    run_cmd(&mut e2e(
        kubeconfig,
        &["pod-security", "--namespace", NAMESPACE, "--selector", &selector, "--expect", "2"],
    ))?;
    check_security()?;
    timer.step("pods' security settings read back (API and kernel)");

    let mut test = crate::cargo();
    test.args(["test", "--package", "e2e", "--test", "cases", "--", "--ignored", "--test-threads=1"])
        .args(&options.test_args)
        .env("PORTCULLIS_E2E_KUBECONFIG", kubeconfig);
    crate::run_tests(&mut test)?;
    timer.step("cases through the Service");

    availability(root, node, helm, &chart, &values, &selector, e2e)?;
    timer.step("availability through a pod deletion and a rolling upgrade");

    let bound = |args: &[&str]| e2e(kubeconfig, args);
    super::uninstall_leaves_no_webhooks(helm, kubeconfig, RELEASE, NAMESPACE, &bound)?;
    // Without the webhook, admission proceeds: the Ingress the policy denies is admitted.
    let no_tls = root.join("policies-wasm/ingress-tls/test_data/no-tls.json");
    let mut after = e2e(kubeconfig, &["load", "--namespace", "portcullis-load", "--rate", "5", "--seconds", "1"]);
    after.arg("--allowed").arg(&no_tls).arg("--denied").arg(&no_tls);
    let text = output_lossy(&mut after)?;
    if !text.contains("0 failed") || text.contains(" 0 decided right") {
        bail!("after helm uninstall, admission should proceed without the webhook: {text}");
    }
    eprintln!("e2e: after helm uninstall the denied Ingress is admitted: no webhook is left in the way");
    timer.step("helm uninstall");
    Ok(())
}

/// Admission stays up while a webhook pod dies and while the chart rolls:
/// a steady stream of dry-run Ingress creates (one that must be admitted,
/// one that must be denied, in turn, 20/s for 60 s), during which one pod is
/// deleted and then `helm upgrade` changes a policy setting and rolls the
/// pods. Zero requests may fail or be decided wrongly.
fn availability(
    root: &Path,
    node: &Node,
    helm: &Helm,
    chart: &Path,
    values: &Path,
    selector: &str,
    e2e: &dyn Fn(&Path, &[&str]) -> Command,
) -> anyhow::Result<()> {
    let kubeconfig = &node.kubeconfig;
    let data = root.join("policies-wasm/ingress-tls/test_data");
    let mut load = e2e(kubeconfig, &["load", "--namespace", "portcullis-load", "--rate", "20", "--seconds", "60"]);
    load.arg("--allowed").arg(data.join("covered.json")).arg("--denied").arg(data.join("no-tls.json"));
    let load = load.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
    std::thread::sleep(Duration::from_secs(10));
    let deleted = output(&mut e2e(kubeconfig, &["delete-one-pod", "--namespace", NAMESPACE, "--selector", selector]))?;
    eprintln!("e2e: deleted webhook pod {} under load", deleted.trim());
    std::thread::sleep(Duration::from_secs(10));
    run_cmd(
        helm.cmd(kubeconfig)
            .args(["upgrade", RELEASE])
            .arg(chart)
            .args(["--namespace", NAMESPACE, "--values"])
            .arg(values)
            .args(install_args(node.apiserver_port))
            .args(["--set", "policies.ingress-tls.timeoutMs=200", "--set", "podAnnotations.e2e/rollout=upgraded"])
            .args(["--wait", "--timeout", "3m"]),
    )?;
    eprintln!("e2e: helm upgrade rolled the webhook pods under load");
    let out = load.wait_with_output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("e2e: {}", report.trim());
    if !out.status.success() {
        bail!(
            "admission failed during the pod deletion or the rollout:\n{report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn output_lossy(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The Deployment's name: the chart's full name for this release.
const RELEASE_DEPLOYMENT: &str = "portcullis-e2e";

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    super::output(cmd)
}

/// The pods run as the chart says, read back from the kernel: each
/// webhook-server process's user, no-new-privs flag, capabilities and
/// read-only root mount (the API side is `portcullis-e2e pod-security`).
fn check_security() -> anyhow::Result<()> {
    let mut checked = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !cmdline.starts_with(b"/usr/local/bin/webhook-server\0serve") {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let uids = field("Uid:");
        if uids.is_empty() || uids.iter().any(|u| *u != "65532") {
            bail!("webhook-server pid {:?} runs with uids {uids:?}, not 65532", entry.file_name());
        }
        if field("NoNewPrivs:") != ["1"] {
            bail!(
                "webhook-server pid {:?} may gain privileges (NoNewPrivs {:?})",
                entry.file_name(),
                field("NoNewPrivs:")
            );
        }
        if field("CapEff:") != ["0000000000000000"] {
            bail!("webhook-server pid {:?} has capabilities {:?}", entry.file_name(), field("CapEff:"));
        }
        let mountinfo = std::fs::read_to_string(entry.path().join("mountinfo")).unwrap_or_default();
        let root_ro = mountinfo.lines().any(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            fields.get(4) == Some(&"/") && fields.get(5).is_some_and(|o| o.split(',').any(|o| o == "ro"))
        });
        if !root_ro {
            bail!("webhook-server pid {:?} has a writable root filesystem", entry.file_name());
        }
        checked += 1;
    }
    if checked != 2 {
        bail!("found {checked} webhook-server processes on the node; expected 2");
    }
    eprintln!("e2e: both webhook-server processes run as 65532, no new privileges, no capabilities, read-only root");
    Ok(())
}
