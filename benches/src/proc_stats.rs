//! Memory and CPU of another process, read from `/proc/PID/status` and `/proc/PID/stat`.

use std::process::Command;

use anyhow::{Context, bail};

/// A process whose resident memory and CPU time we sample (the broker under test).
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pid: u32,
    ticks_per_second: u64,
}

impl Probe {
    /// Checks that the process exists and learns the clock-tick rate (`getconf CLK_TCK`,
    /// 100 if that cannot be run).
    pub fn new(pid: u32) -> anyhow::Result<Self> {
        let probe = Self {
            pid,
            ticks_per_second: clock_ticks(),
        };
        probe
            .rss_kb()
            .with_context(|| format!("cannot sample broker process {pid}"))?;
        Ok(probe)
    }

    /// Resident set size (`VmRSS`) in KiB.
    pub fn rss_kb(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .with_context(|| format!("no VmRSS line in {path}"))?;
        let kb = line.trim().trim_end_matches("kB").trim();
        kb.parse()
            .with_context(|| format!("VmRSS {line:?} in {path} is not a number"))
    }

    /// User plus system CPU time the process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        // The command name (field 2) is in parentheses and may contain spaces; fields
        // after it start with field 3 (state), so utime (14) and stime (15) are the 12th
        // and 13th after the last ')'.
        let rest = stat
            .rfind(')')
            .map(|i| &stat[i + 1..])
            .with_context(|| format!("unexpected format of {path}"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize, name: &str| -> anyhow::Result<u64> {
            let Some(text) = fields.get(i) else {
                bail!("{path} has no {name} field");
            };
            text.parse()
                .with_context(|| format!("{name} {text:?} in {path} is not a number"))
        };
        let ticks = field(11, "utime")? + field(12, "stime")?;
        Ok(ticks as f64 / self.ticks_per_second as f64)
    }
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}
