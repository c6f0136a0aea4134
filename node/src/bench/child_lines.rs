//! Child processes of the benchmarks, read line by line: a thread reads each child's
//! stdout into a channel, and [`wait_line`] waits for the line that says it is ready.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// Spawns `cmd` with its stdout piped (stderr dropped); its lines come on the receiver.
pub fn spawn(cmd: &mut Command) -> Result<(Child, Receiver<String>)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let stdout = child.stdout.take().context("piped stdout")?;
    // Bounded: a child that prints faster than the bench reads waits on its pipe.
    let (tx, rx) = std::sync::mpsc::sync_channel(256);
    std::thread::spawn(move || {
        // Once nobody listens, lines are read and dropped: a child writing to a closed
        // pipe would fail.
        let mut listening = true;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            listening = listening && tx.send(line).is_ok();
        }
    });
    Ok((child, rx))
}

/// The next line starting with `prefix`, within `limit`.
pub fn wait_line(lines: &Receiver<String>, prefix: &str, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .with_context(|| format!("a child printed no `{prefix}` line in {} s", limit.as_secs_f64()))?;
        if line.starts_with(prefix) {
            return Ok(line);
        }
    }
}
