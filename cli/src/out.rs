//! Writing to stdout without panicking when the reader goes away.
//!
//! `multinicctl status | head` closes the pipe after ten lines; `print!`
//! would then panic with a backtrace. Here a closed pipe silently ends the
//! output: the command still finishes and exits with the code it computed
//! (a watch stops). Any other write error is reported once by `main` and
//! makes the command fail.

use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// Writes `text` to stdout, unless stdout is gone.
pub fn print(text: &str) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != io::ErrorKind::BrokenPipe
            && let Ok(mut failed) = FAILED.lock()
        {
            *failed = Some(e.to_string());
        }
    }
}

/// Whether stdout is gone (its reader closed it, or writing failed).
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Why writing to stdout failed, if it did for another reason than a closed pipe.
pub fn failure() -> Option<String> {
    FAILED.lock().ok().and_then(|f| f.clone())
}

/// `print!` to stdout through [`print`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::print(&format!($($arg)*)) };
}

/// `println!` to stdout through [`print`].
macro_rules! outln {
    () => { $crate::out::print("\n") };
    ($($arg:tt)*) => { $crate::out::print(&format!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {out, outln};
