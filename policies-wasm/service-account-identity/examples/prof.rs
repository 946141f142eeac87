// Throwaway profiling loop (not committed).
fn main() {
    let input = std::fs::read("/tmp/prof/input.json").unwrap();
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let t = std::time::Instant::now();
    let mut total = 0;
    for _ in 0..n {
        let out = service_account_identity::evaluate(&input);
        total += serde_json::to_vec(&out).unwrap().len();
    }
    eprintln!("{:.2} us/eval ({total})", t.elapsed().as_secs_f64() * 1e6 / n as f64);
}
