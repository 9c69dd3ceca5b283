//! Guest stdout, stderr and the `log` import, turned into `tracing` events
//! tagged with the tenant and rule.
//!
//! A guest never sees an error from writing: output beyond the per-call
//! budget is counted and dropped (and the drop is logged once per call), so
//! a chatty or hostile rule cannot flood the host's logs or make its own
//! `println!` panic. The last lines of stderr are kept so that a trap can be
//! reported with the guest's own last words (a Rust panic message, say).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::RuleLabel;
use super::bindings::wit_host::Level;

/// Longest line kept; the rest of a longer line is cut.
const MAX_LINE: usize = 4 << 10;
/// Lines of stderr kept for error reports, and lines of any stream kept
/// for a fire's record.
const TAIL_LINES: usize = 16;
/// Longest line kept in a call's log tail (the record of a fire).
const TAIL_LINE: usize = 512;

/// Which guest stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Debug)]
struct State {
    label: RuleLabel,
    budget: usize,
    used: usize,
    dropped: usize,
    partial: [Vec<u8>; 2],
    stderr_tail: VecDeque<String>,
    /// The call's last lines of every stream, named by it (`stdout: …`,
    /// `info: …`).
    tail: VecDeque<String>,
}

/// The output side of one store: shared by its stdout, stderr and `log`.
#[derive(Debug, Clone)]
pub(crate) struct GuestOutput {
    state: Arc<Mutex<State>>,
}

impl GuestOutput {
    pub(crate) fn new(label: RuleLabel, budget: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                label,
                budget,
                used: 0,
                dropped: 0,
                partial: [Vec::new(), Vec::new()],
                stderr_tail: VecDeque::new(),
                tail: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while logging; the
        // state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stream(&self, stream: Stream) -> GuestStream {
        GuestStream {
            out: self.clone(),
            stream,
        }
    }

    /// Start a call: the budget is per call.
    pub(crate) fn begin_call(&self) {
        let mut s = self.lock();
        s.used = 0;
        s.dropped = 0;
        s.stderr_tail.clear();
        s.tail.clear();
    }

    /// End a call: flush unterminated lines and report what was dropped.
    pub(crate) fn end_call(&self) {
        let mut s = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut s.partial[stream as usize]);
            if !rest.is_empty() {
                s.emit_line(stream, &rest);
            }
        }
        if s.dropped > 0 {
            tracing::warn!(
                tenant = %s.label.tenant,
                rule = %s.label.rule,
                dropped_bytes = s.dropped,
                "guest output over the per-call budget was dropped"
            );
        }
    }

    /// The last lines the guest wrote to stderr during this call.
    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        self.lock().stderr_tail.iter().cloned().collect()
    }

    /// The last lines the guest wrote during this call, to any stream or
    /// through `log`, each named by where it went (`stderr: boom`).
    pub(crate) fn tail(&self) -> Vec<String> {
        self.lock().tail.iter().cloned().collect()
    }

    /// The `log` import.
    pub(crate) fn log(&self, level: Level, message: &str) {
        let mut s = self.lock();
        if !s.charge(message.len()) {
            return;
        }
        let message = truncate(message);
        let name = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        s.keep(name, message);
        let (tenant, rule) = (&s.label.tenant, &s.label.rule);
        match level {
            Level::Trace => tracing::trace!(%tenant, %rule, "{message}"),
            Level::Debug => tracing::debug!(%tenant, %rule, "{message}"),
            Level::Info => tracing::info!(%tenant, %rule, "{message}"),
            Level::Warn => tracing::warn!(%tenant, %rule, "{message}"),
            Level::Error => tracing::error!(%tenant, %rule, "{message}"),
        }
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut s = self.lock();
        if !s.charge(bytes.len()) {
            return;
        }
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut s.partial[stream as usize]);
            line.extend_from_slice(&rest[..nl]);
            s.emit_line(stream, &line);
            rest = &rest[nl + 1..];
        }
        let partial = &mut s.partial[stream as usize];
        let room = MAX_LINE.saturating_sub(partial.len());
        partial.extend_from_slice(&rest[..rest.len().min(room)]);
    }
}

impl State {
    /// Take `n` bytes from the budget; false (and counted) when over it.
    fn charge(&mut self, n: usize) -> bool {
        if self.used.saturating_add(n) > self.budget {
            self.dropped = self.dropped.saturating_add(n);
            return false;
        }
        self.used += n;
        true
    }

    fn emit_line(&mut self, stream: Stream, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = truncate(text.trim_end_matches('\r'));
        tracing::info!(
            tenant = %self.label.tenant,
            rule = %self.label.rule,
            stream = stream.name(),
            "{text}"
        );
        self.keep(stream.name(), text);
        if stream == Stream::Stderr {
            if self.stderr_tail.len() == TAIL_LINES {
                self.stderr_tail.pop_front();
            }
            self.stderr_tail.push_back(text.to_owned());
        }
    }
}

impl State {
    /// Keep a line in the call's tail.
    fn keep(&mut self, stream: &str, text: &str) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail
            .push_back(format!("{stream}: {}", truncate_to(text, TAIL_LINE)));
    }
}

fn truncate(s: &str) -> &str {
    truncate_to(s, MAX_LINE)
}

fn truncate_to(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One of a store's output streams, as WASI sees it.
#[derive(Debug, Clone)]
pub(crate) struct GuestStream {
    out: GuestOutput,
    stream: Stream,
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.out.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.out.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(budget: usize) -> GuestOutput {
        GuestOutput::new(RuleLabel::new("t", "r"), budget)
    }

    #[test]
    fn splits_lines_and_keeps_stderr_tail() {
        let out = output(1 << 20);
        out.begin_call();
        out.write(Stream::Stderr, b"thread panicked at src/lib.rs:3:5:\nboom");
        out.write(Stream::Stderr, b"!\n");
        out.end_call();
        assert_eq!(
            out.stderr_tail(),
            vec!["thread panicked at src/lib.rs:3:5:", "boom!"]
        );
    }

    #[test]
    fn keeps_the_last_lines_of_every_stream_named() {
        let out = output(1 << 20);
        out.begin_call();
        out.write(Stream::Stdout, b"hello\n");
        out.log(Level::Warn, "careful");
        out.write(Stream::Stderr, b"oops");
        out.end_call();
        assert_eq!(
            out.tail(),
            vec!["stdout: hello", "warn: careful", "stderr: oops"]
        );
        out.begin_call();
        for i in 0..40 {
            out.log(Level::Info, &format!("line {i}"));
        }
        let tail = out.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last().map(String::as_str), Some("info: line 39"));
    }

    #[test]
    fn budget_drops_excess_without_failing() {
        let out = output(10);
        out.begin_call();
        out.write(Stream::Stderr, b"12345\n");
        out.write(Stream::Stderr, b"6789012345\n");
        out.end_call();
        assert_eq!(out.stderr_tail(), vec!["12345"]);
        assert_eq!(out.lock().dropped, 11);
    }

    #[test]
    fn long_lines_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_LINE);
        assert!(truncate(&long).len() <= MAX_LINE);
        assert!(long.starts_with(truncate(&long)));
    }
}
