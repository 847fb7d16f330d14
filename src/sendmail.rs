//! Placeholder until the sendmail entry point lands.
pub fn main(_args: &[String]) -> std::process::ExitCode {
    eprintln!("mxrelay sendmail: not available yet");
    std::process::ExitCode::from(69)
}
