//! The `swift` binary as a user runs it: exit codes and messages.

use std::process::Command;

fn swift(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_swift"))
        .args(args)
        .output()
        .expect("swift runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_exits_zero_and_lists_groups() {
    let (code, stdout, _) = swift(&["sft", "--help"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("LoRA arguments:") && stdout.contains("🔥--model <str>"),
        "{stdout}"
    );
    let (code, stdout, _) = swift(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_two_with_one_clear_line() {
    let (code, _, stderr) = swift(&["sft", "--lora_rnak", "8"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("did you mean '--lora_rank'"), "{stderr}");
    let (code, _, stderr) = swift(&["infer", "--infer_backend", "lmdeploy"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not supported yet"), "{stderr}");
    let (code, _, _) = swift(&[]);
    assert_eq!(code, 2);
}

#[test]
fn commands_without_an_engine_say_so_and_fail() {
    for cmd in ["rlhf", "sample", "eval", "app", "web-ui"] {
        let (code, stdout, stderr) = swift(&[cmd]);
        assert_eq!(code, 3, "{cmd}: {stderr}");
        assert!(stdout.is_empty());
        assert!(stderr.contains("not built yet"), "{cmd}: {stderr}");
    }
    // An engine that exists but not for these options exits the same way, naming them.
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/models/tiny-Qwen2.5"
    );
    let (code, _, stderr) = swift(&["export", "--model", model]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--merge_lora true"), "{stderr}");
}
