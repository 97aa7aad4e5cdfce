//! `DLM_CPU_ISA` as a user meets it, through `dlm info --system`: unset, the CPU's best path;
//! `generic`, the portable kernels everywhere dlm chooses; a path above the CPU's or an unknown
//! name, a warning and the CPU's best.

use std::process::Command;

fn info_system(isa: Option<&str>) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dlm"));
    cmd.args(["info", "--system"]).env_remove("DLM_CPU_ISA");
    if let Some(isa) = isa {
        cmd.env("DLM_CPU_ISA", isa);
    }
    let out = cmd.output().expect("dlm runs");
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value after `label` on its line of the report.
fn field(report: &str, label: &str) -> String {
    let line = report
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` in\n{report}"));
    line[label.len()..]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn dlm_cpu_isa_lowers_the_path_and_warns_when_it_cannot_raise_it() {
    let (report, stderr) = info_system(None);
    println!("{report}");
    assert!(stderr.is_empty(), "{stderr}");
    let best = field(&report, "best path");
    assert_eq!(field(&report, "selected path"), best);

    let (report, stderr) = info_system(Some("generic"));
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(field(&report, "selected path"), "generic");
    let bf16_line = report
        .lines()
        .find(|l| l.contains("linear, bf16 training"))
        .expect("kernel line");
    assert!(bf16_line.trim_end().ends_with("generic"), "{bf16_line}");

    for wrong in ["amx-bf16", "sse9"] {
        let (report, stderr) = info_system(Some(wrong));
        if wrong == "amx-bf16" && best == "amx-bf16" {
            continue;
        }
        assert!(
            stderr.contains("warning: DLM_CPU_ISA="),
            "{wrong}: {stderr}"
        );
        assert_eq!(field(&report, "selected path"), best, "{wrong}");
    }
}
