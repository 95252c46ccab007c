//! Command-line arguments common to every demo server (`--port P`), parsed by hand so the
//! binaries stay thin and dependency-free.

use std::fmt;

/// Usage text printed for `--help` and after an argument error.
pub const USAGE: &str = "\
Options:
  --port <P>   TCP port on 127.0.0.1 to listen on (default 0: any free port)
  -h, --help   Print this help

Serves GET /work?io_ms=N&cpu_us=M: waits N ms, burns M µs of CPU, answers 200 \"ok\".
Prints `listening on 127.0.0.1:PORT` once ready; exits 0 on SIGINT or SIGTERM.";

/// Parsed server arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerArgs {
    /// Port to bind on 127.0.0.1; 0 picks a free one.
    pub port: u16,
}

/// Why the arguments were not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    /// `--help` was asked for.
    Help,
    /// Anything else, with a message.
    Invalid(String),
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgsError::Help => f.write_str("help requested"),
            ArgsError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl ServerArgs {
    /// Parses arguments (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, ArgsError> {
        let mut out = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let value = match arg.as_str() {
                "-h" | "--help" => return Err(ArgsError::Help),
                "--port" => args
                    .next()
                    .ok_or_else(|| ArgsError::Invalid("--port needs a value".into()))?,
                other => match other.strip_prefix("--port=") {
                    Some(v) => v.to_string(),
                    None => return Err(ArgsError::Invalid(format!("unknown argument `{other}`"))),
                },
            };
            out.port = value
                .parse()
                .map_err(|_| ArgsError::Invalid(format!("invalid port `{value}`")))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServerArgs, ArgsError> {
        ServerArgs::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_port_forms() {
        assert_eq!(parse(&[]), Ok(ServerArgs { port: 0 }));
        assert_eq!(parse(&["--port", "8080"]), Ok(ServerArgs { port: 8080 }));
        assert_eq!(parse(&["--port=81"]), Ok(ServerArgs { port: 81 }));
        assert!(matches!(
            parse(&["--port", "x"]),
            Err(ArgsError::Invalid(_))
        ));
        assert!(matches!(parse(&["--port"]), Err(ArgsError::Invalid(_))));
        assert!(matches!(parse(&["--bogus"]), Err(ArgsError::Invalid(_))));
        assert_eq!(parse(&["--help"]), Err(ArgsError::Help));
    }
}
