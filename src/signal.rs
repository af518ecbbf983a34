//! The signals a caller may send to a sandbox ([`crate::Sandbox::kill`]): runbox's own type,
//! by name and number, so that runbox's API does not move with nix's. Pure: no host code;
//! runs in the caller's process.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind};

macro_rules! signals {
    ($($(#[$doc:meta])* $name:ident = $libc:ident,)*) => {
        /// A signal [`crate::Sandbox::kill`] sends: the standard Linux signals (not the
        /// obsolete `SIGSTKFLT`, nor real-time ones).
        /// Parsed from `TERM`, `sigterm`, `SIGTERM` or `15`; shown as `SIGTERM`.
        #[allow(clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        // Each discriminant is the signal's number, so that even an `as i32` sends the
        // right signal (a plain enum's would be its position in this list).
        #[repr(i32)]
        pub enum Signal {
            $($(#[$doc])* $name = libc::$libc,)*
        }

        impl Signal {
            /// Every signal of this type.
            pub const ALL: &'static [Signal] = &[$(Signal::$name,)*];

            /// Its name, `SIGTERM` say.
            pub fn name(self) -> &'static str {
                match self {
                    $(Signal::$name => stringify!($name),)*
                }
            }

            /// Its number on this machine.
            pub fn as_raw(self) -> i32 {
                match self {
                    $(Signal::$name => libc::$libc,)*
                }
            }
        }
    };
}

signals! {
    /// Hangup.
    SIGHUP = SIGHUP,
    /// Interrupt (Ctrl-C).
    SIGINT = SIGINT,
    /// Quit (Ctrl-\\).
    SIGQUIT = SIGQUIT,
    /// Illegal instruction.
    SIGILL = SIGILL,
    /// Trace or breakpoint trap.
    SIGTRAP = SIGTRAP,
    /// Abort.
    SIGABRT = SIGABRT,
    /// Bus error.
    SIGBUS = SIGBUS,
    /// Floating-point exception.
    SIGFPE = SIGFPE,
    /// Kill: cannot be caught; ends the whole sandbox at once.
    SIGKILL = SIGKILL,
    /// User-defined signal 1.
    SIGUSR1 = SIGUSR1,
    /// Invalid memory reference.
    SIGSEGV = SIGSEGV,
    /// User-defined signal 2.
    SIGUSR2 = SIGUSR2,
    /// Broken pipe.
    SIGPIPE = SIGPIPE,
    /// Alarm clock.
    SIGALRM = SIGALRM,
    /// Termination.
    SIGTERM = SIGTERM,
    /// Child stopped or ended.
    SIGCHLD = SIGCHLD,
    /// Continue if stopped.
    SIGCONT = SIGCONT,
    /// Stop: cannot be caught.
    SIGSTOP = SIGSTOP,
    /// Stop from the terminal (Ctrl-Z).
    SIGTSTP = SIGTSTP,
    /// Background read from the terminal.
    SIGTTIN = SIGTTIN,
    /// Background write to the terminal.
    SIGTTOU = SIGTTOU,
    /// Urgent data on a socket.
    SIGURG = SIGURG,
    /// CPU time limit exceeded.
    SIGXCPU = SIGXCPU,
    /// File size limit exceeded.
    SIGXFSZ = SIGXFSZ,
    /// Virtual timer expired.
    SIGVTALRM = SIGVTALRM,
    /// Profiling timer expired.
    SIGPROF = SIGPROF,
    /// Window size change.
    SIGWINCH = SIGWINCH,
    /// I/O possible.
    SIGIO = SIGIO,
    /// Power failure.
    SIGPWR = SIGPWR,
    /// Bad system call.
    SIGSYS = SIGSYS,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<i32> for Signal {
    type Error = Error;

    /// The signal of number `n` on this machine.
    ///
    /// # Errors
    /// `InvalidConfig` for a number that is none of [`Signal::ALL`].
    fn try_from(n: i32) -> Result<Signal, Error> {
        Signal::ALL
            .iter()
            .copied()
            .find(|s| s.as_raw() == n)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("{n} is not a signal runbox sends"),
                )
            })
    }
}

impl From<Signal> for i32 {
    fn from(s: Signal) -> i32 {
        s.as_raw()
    }
}

impl FromStr for Signal {
    type Err = Error;

    /// A signal by name, with or without `SIG`, in any case (`TERM`, `sigterm`, `SIGTERM`),
    /// or by number (`15`).
    ///
    /// # Errors
    /// `InvalidConfig` for anything else.
    fn from_str(s: &str) -> Result<Signal, Error> {
        if let Ok(n) = s.parse::<i32>() {
            return Signal::try_from(n);
        }
        let upper = s.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        Signal::ALL
            .iter()
            .copied()
            .find(|sig| &sig.name()[3..] == name)
            .ok_or_else(|| Error::new(ErrorKind::InvalidConfig, format!("{s:?} is not a signal")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_go_by_name_and_number_both_ways() {
        assert_eq!("TERM".parse::<Signal>().unwrap(), Signal::SIGTERM);
        assert_eq!("sigkill".parse::<Signal>().unwrap(), Signal::SIGKILL);
        assert_eq!("SIGUSR1".parse::<Signal>().unwrap(), Signal::SIGUSR1);
        assert_eq!("9".parse::<Signal>().unwrap(), Signal::SIGKILL);
        assert_eq!(Signal::SIGTERM.as_raw(), 15);
        assert_eq!(Signal::SIGKILL.to_string(), "SIGKILL");
        assert_eq!("segv".parse::<Signal>().unwrap(), Signal::SIGSEGV);
        for s in Signal::ALL {
            assert_eq!(Signal::try_from(s.as_raw()).unwrap(), *s);
            assert_eq!(*s as i32, s.as_raw(), "{s}: the discriminant is the number");
            assert_eq!(s.name().parse::<Signal>().unwrap(), *s);
            assert!(s.name().starts_with("SIG"));
        }
        for bad in ["", "SIG", "TERMX", "0", "-9", "64", "SIGRTMIN", "SIGSTKFLT"] {
            let e = bad.parse::<Signal>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{bad:?}");
        }
    }
}
