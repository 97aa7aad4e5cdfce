//! `dlm info --system`: the CPU, its features, and which path each of dlm's kernels takes.

use serde_json::json;

use crate::ops::gemm::{self, isa};

pub fn run(as_json: bool) -> anyhow::Result<()> {
    let f = isa::features();
    let requested = std::env::var("DLM_CPU_ISA").ok();
    let selected = isa::selected();
    let kernels = gemm::kernel_paths();
    let threads = rayon::current_num_threads();
    if as_json {
        let info = json!({
            "cpu": f.model,
            "features": f.flags.iter().map(|&(n, on)| (n.to_string(), json!(on)))
                .collect::<serde_json::Map<_, _>>(),
            "best_path": f.best().name(),
            "DLM_CPU_ISA": requested,
            "selected_path": selected.name(),
            "gemm_path": isa::gemm_path().name(),
            "threads": threads,
            "kernels": kernels.iter().map(|(k, p)| (k.to_string(), json!(p))).collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let (on, off): (Vec<_>, Vec<_>) = f.flags.iter().partition(|(_, on)| *on);
    let names = |v: &[&(&str, bool)]| v.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" ");
    println!("cpu            {}", f.model);
    println!("features       {}", names(&on));
    println!("absent         {}", names(&off));
    println!("best path      {}", f.best());
    println!(
        "selected path  {selected} (DLM_CPU_ISA {})",
        requested.as_deref().unwrap_or("unset")
    );
    println!("threads        {threads} (RAYON_NUM_THREADS or the cores)");
    println!("kernels");
    for (k, p) in kernels {
        println!("  {k:<48} {p}");
    }
    let (_, skipped) = gemm::runnable_paths();
    for s in skipped {
        println!("  {s}");
    }
    Ok(())
}
