//! compose.yaml must describe the topology `demo-app up` starts, in a form a Compose
//! implementation accepts, with commands the binaries accept. No container engine runs
//! here, so this checks the file with a Compose-spec parser and the real argument parser.

use std::collections::BTreeSet;

use clap::{CommandFactory, Parser};
use compose_spec::Compose;
use compose_spec::service::Command;
use demo_app::cli::Cli;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn compose() -> Compose {
    let text = std::fs::read_to_string(format!("{ROOT}/compose.yaml")).expect("read compose.yaml");
    compose_spec::Compose::options()
        .apply_merge(true)
        .from_yaml_str(&text)
        .expect("compose.yaml follows the Compose spec")
}

/// Every environment variable some `demo-app` flag reads.
fn known_env() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = BTreeSet::from(["RUST_LOG".to_string()]);
    walk(&Cli::command(), &mut out);
    out
}

#[test]
fn the_image_entrypoint_is_demo_app() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == r#"ENTRYPOINT ["demo-app"]"#),
        "compose commands below are demo-app subcommands"
    );
}

#[test]
fn every_service_command_and_variable_is_one_the_binary_accepts() {
    let compose = compose();
    let env = known_env();
    let mut ours = 0;
    for (name, service) in &compose.services {
        let Some(command) = &service.command else {
            continue;
        };
        ours += 1;
        let Command::List(args) = command else {
            panic!("{name}: use the list form so no shell is involved");
        };
        let argv = std::iter::once("demo-app").chain(args.iter().map(String::as_str));
        if let Err(err) = Cli::try_parse_from(argv) {
            panic!("{name}: `demo-app {}` is rejected:\n{err}", args.join(" "));
        }
        let vars = service
            .environment
            .clone()
            .into_map()
            .expect("environment as a map");
        for var in vars.keys() {
            assert!(env.contains(var.as_str()), "{name}: no flag reads {var}");
        }
    }
    assert_eq!(ours, 5, "store, three app nodes and the LB");
}

#[test]
fn the_lb_points_at_the_app_services_and_publishes_only_on_loopback() {
    let compose = compose();
    let lb = compose
        .services
        .iter()
        .find(|(n, _)| n.as_str() == "lb")
        .expect("an lb service")
        .1;
    let Some(Command::List(args)) = &lb.command else {
        panic!("lb has a list command");
    };
    let backends: Vec<&String> = args
        .iter()
        .zip(args.iter().skip(1))
        .filter(|(flag, _)| *flag == "--backend")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(backends.len(), 3);
    for b in backends {
        let host = b
            .split("//")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .expect("backend URL has a host");
        assert!(
            compose.services.keys().any(|k| k.as_str() == host),
            "backend {b} names no service"
        );
    }
    let ports = serde_yaml::to_value(&lb.ports).expect("ports as YAML");
    let text = serde_yaml::to_string(&ports).expect("ports as text");
    assert!(
        text.contains("127.0.0.1"),
        "the LB is published on loopback only: {text}"
    );
    let redis = compose
        .services
        .iter()
        .find(|(n, _)| n.as_str() == "redis")
        .expect("a redis service for the real-Redis profile")
        .1;
    assert!(redis.profiles.iter().any(|p| p.as_str() == "redis"));
}
