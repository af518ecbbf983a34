//! `runbox image …`: the image store's verbs (import, pull, list, inspect, rm, prune, df).

use std::io::IsTerminal;
use std::path::Path;
#[cfg(feature = "registry")]
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[cfg(feature = "registry")]
use super::Failure;
use super::{print_json, Outcome};

/// The image store's verbs.
#[derive(Subcommand)]
pub enum ImageVerb {
    /// Import an OCI image layout directory or a docker archive (`docker save`, skopeo's
    /// docker-archive): PATH, or PATH:TAG for one tagged image of it.
    Import {
        /// No progress display.
        #[arg(long, short)]
        quiet: bool,
        /// PATH[:TAG].
        source: String,
    },
    /// Pull an image from an OCI distribution registry (linux and this host's architecture
    /// from a multi-platform index).
    #[cfg(feature = "registry")]
    Pull {
        /// No progress display.
        #[arg(long, short)]
        quiet: bool,
        /// Plain HTTP instead of HTTPS (a registry on localhost for tests, say).
        #[arg(long = "plain-http")]
        plain_http: bool,
        /// Trust the CA certificates of this PEM file besides the system's.
        #[arg(long = "ca-file")]
        ca_file: Option<PathBuf>,
        /// USER:PASSWORD for the registry (default: $RUNBOX_REGISTRY_CREDS, else none).
        #[arg(long)]
        creds: Option<String>,
        /// `[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]`, as docker reads it.
        reference: String,
    },
    /// List the stored images.
    #[command(visible_alias = "ls")]
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Print one image (names, digest, layers, config, sandboxes using it) as JSON.
    Inspect {
        /// A name, a digest or a unique digest prefix.
        reference: String,
    },
    /// Remove names (a digest: every name of that image). Layers go with `prune`.
    Rm {
        /// Names or digests.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Remove what no image needs: unnamed unused images, their layers and blobs, and the
    /// leftovers of interrupted imports and pulls. Prints what it freed.
    Prune,
    /// Print the store's disk usage.
    Df,
}

/// Runs an image verb on the store at `dir`.
pub fn main(dir: &Path, verb: ImageVerb) -> Outcome {
    let store = runbox::ImageStore::open(dir)?;
    match verb {
        ImageVerb::Import { quiet, source } => {
            let (path, tag) = split_tag(&source);
            let mut bar = Bar::new(quiet);
            let images = store.import(path, tag, &mut |p| bar.update(p));
            bar.finish();
            for image in images? {
                println!("{}", describe(&image));
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "registry")]
        ImageVerb::Pull {
            quiet,
            plain_http,
            ca_file,
            creds,
            reference,
        } => {
            let creds = creds.or_else(|| std::env::var("RUNBOX_REGISTRY_CREDS").ok());
            let credentials = match creds {
                Some(c) => {
                    let (user, pass) = c
                        .split_once(':')
                        .ok_or_else(|| Failure("--creds is USER:PASSWORD".into()))?;
                    Some((user.to_string(), pass.to_string()))
                }
                None => None,
            };
            let mut opts = runbox::PullOptions::default();
            opts.plain_http(plain_http);
            if let Some(ca) = ca_file {
                opts.ca_file(ca);
            }
            if let Some((user, pass)) = credentials {
                opts.credentials(user, pass);
            }
            let mut bar = Bar::new(quiet);
            let image = store.pull(&reference, &opts, &mut |p| bar.update(p));
            bar.finish();
            println!("{}", describe(&image?));
            Ok(ExitCode::SUCCESS)
        }
        ImageVerb::List { json } => {
            let images = store.list()?;
            if json {
                return print_json(&images);
            }
            println!("{:<40} {:<19} {:>10}  CREATED", "NAME", "DIGEST", "SIZE");
            for i in images {
                let short = i.digest.get(..19).unwrap_or(&i.digest).to_string();
                let created = i.created.clone().unwrap_or_default();
                let names = if i.names.is_empty() {
                    vec!["<none>".to_string()]
                } else {
                    i.names.clone()
                };
                for n in names {
                    println!("{n:<40} {short:<19} {:>10}  {created}", human(i.size));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageVerb::Inspect { reference } => print_json(&store.inspect(&reference)?),
        ImageVerb::Rm { references } => {
            for r in references {
                let report = store.remove(&r)?;
                let what = if report.removed {
                    "removed"
                } else {
                    "untagged"
                };
                println!("{what} {} ({})", report.names.join(", "), report.digest);
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageVerb::Prune => {
            let r = store.prune()?;
            println!(
                "freed {} ({} images, {} layers, {} blobs, {} unfinished imports, {} stale pins)",
                human(r.freed_bytes),
                r.images.len(),
                r.layers,
                r.blobs,
                r.staging,
                r.stale_pins
            );
            Ok(ExitCode::SUCCESS)
        }
        ImageVerb::Df => {
            println!("{}\t{}", human(store.disk_usage()), store.dir().display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `PATH[:TAG]`: the tag only if PATH as written does not exist and the part before the
/// last `:` does.
fn split_tag(source: &str) -> (&str, Option<&str>) {
    if Path::new(source).exists() {
        return (source, None);
    }
    match source.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && Path::new(path).exists() => (path, Some(tag)),
        _ => (source, None),
    }
}

/// One line about an imported or pulled image.
fn describe(i: &runbox::ImageInfo) -> String {
    let names = if i.names.is_empty() {
        "<none>".to_string()
    } else {
        i.names.join(", ")
    };
    format!(
        "{names} {} ({} layers, {})",
        i.digest,
        i.layers,
        human(i.size)
    )
}

/// Bytes as K, M, G (powers of 1024), one decimal.
fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A progress display on stderr when it is a terminal (and not `--quiet`): one bar per
/// layer, with bytes.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    on: bool,
}

impl Bar {
    fn new(quiet: bool) -> Bar {
        Bar {
            bar: None,
            on: !quiet && std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, p: &runbox::Progress) {
        if !self.on {
            return;
        }
        match p {
            runbox::Progress::Layer {
                index,
                count,
                digest,
                total,
                cached,
                ..
            } => {
                if let Some(b) = self.bar.take() {
                    b.finish();
                }
                let short = digest.get(7..19).unwrap_or(digest);
                let b = indicatif::ProgressBar::new(total.unwrap_or(0));
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix} {bar:30} {bytes}/{total_bytes} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                b.set_style(style);
                b.set_prefix(format!("layer {}/{count} {short}", index + 1));
                if *cached {
                    b.finish_with_message("already stored");
                } else {
                    self.bar = Some(b);
                }
            }
            runbox::Progress::Bytes(n) => {
                if let Some(b) = &self.bar {
                    b.set_position(*n);
                }
            }
            _ => {}
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}
