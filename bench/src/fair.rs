//! What makes a side-by-side run fair, apart from the processes: the order of the runs (the
//! two systems alternate which goes first, ABBA, so that neither always gets the warmer page
//! cache, the emptier disk queue or the later compaction), several runs per configuration,
//! and a table of medians with every run's figures beneath it, so that one lucky or unlucky
//! run neither decides nor hides.

use std::time::Duration;

use crate::stats::ms;
use crate::system::System;

/// Figures of one closed-loop run.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Completed operations.
    pub ops: usize,
    /// Operations per second over the run.
    pub per_second: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Slowest operation.
    pub max: Duration,
}

/// One measured run of one system at one concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Concurrent clients.
    pub clients: usize,
    /// 0-based repetition of this configuration.
    pub run: usize,
    /// The system measured.
    pub system: System,
    /// Whether it goes first of its pair (always, when only one system runs).
    pub first: bool,
}

/// Every measured run in the order to run them: for each concurrency, `runs` pairs, and the
/// system that goes first alternates from pair to pair across the whole schedule (A B, B A,
/// A B, …). With three runs, each system goes first at least once at every concurrency, and
/// the one that goes first twice alternates from one concurrency to the next.
pub fn schedule(clients: &[usize], runs: usize, systems: &[System]) -> Vec<Slot> {
    let mut out = Vec::new();
    let mut pair = 0;
    for &n in clients {
        for run in 0..runs {
            let mut order: Vec<System> = systems.to_vec();
            if pair % 2 == 1 {
                order.reverse();
            }
            for (i, &system) in order.iter().enumerate() {
                out.push(Slot {
                    clients: n,
                    run,
                    system,
                    first: i == 0,
                });
            }
            pair += 1;
        }
    }
    out
}

/// The median of `values` (the lower middle one for an even count, like
/// [`crate::stats::median`]); `None` when there are none.
pub fn median_of<T: Copy + PartialOrd>(values: &[T]) -> Option<T> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        None
    } else {
        Some(v[(v.len() - 1) / 2])
    }
}

/// Each figure's median over the runs, taken figure by figure (the median p99 need not come
/// from the median-throughput run).
pub fn median_figures(runs: &[Run]) -> Option<Figures> {
    let pick =
        |f: fn(&Figures) -> f64| median_of(&runs.iter().map(|r| f(&r.figures)).collect::<Vec<_>>());
    let pick_d = |f: fn(&Figures) -> Duration| {
        median_of(&runs.iter().map(|r| f(&r.figures)).collect::<Vec<_>>())
    };
    Some(Figures {
        ops: median_of(&runs.iter().map(|r| r.figures.ops).collect::<Vec<_>>())?,
        per_second: pick(|f| f.per_second)?,
        p50: pick_d(|f| f.p50)?,
        p99: pick_d(|f| f.p99)?,
        max: pick_d(|f| f.max)?,
    })
}

/// One finished run: its figures and whether it went first of its pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub figures: Figures,
    pub first: bool,
}

/// Every run of one concurrency, per system, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub clients: usize,
    pub shoal: Vec<Run>,
    pub etcd: Vec<Run>,
}

/// Files each finished run under its concurrency's row (rows in first-seen order).
pub fn collect(results: Vec<(Slot, Figures)>) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for (slot, figures) in results {
        let i = match rows.iter().position(|r| r.clients == slot.clients) {
            Some(i) => i,
            None => {
                rows.push(Row {
                    clients: slot.clients,
                    ..Row::default()
                });
                rows.len() - 1
            }
        };
        let run = Run {
            figures,
            first: slot.first,
        };
        match slot.system {
            System::Shoal => rows[i].shoal.push(run),
            System::Etcd => rows[i].etcd.push(run),
        }
    }
    rows
}

/// Right-aligned columns, two spaces apart.
fn columns(table: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..table.first().map_or(0, Vec::len))
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in table {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:>w$}"))
            .collect();
        out.push_str(&cells.join("  "));
        out.push('\n');
    }
    out
}

/// The table of medians: one row per concurrency, a column group per system that ran
/// (`unit` names the operation: "writes", "reads"), and the ratios shoal/etcd of the medians
/// when both did (throughput above 1 and p99 below 1 favour shoal).
pub fn table(rows: &[Row], unit: &str) -> String {
    let has_shoal = rows.iter().any(|r| !r.shoal.is_empty());
    let has_etcd = rows.iter().any(|r| !r.etcd.is_empty());
    let both = has_shoal && has_etcd;
    let mut header = vec!["clients".to_string()];
    for (name, present) in [("shoal", has_shoal), ("etcd", has_etcd)] {
        if present {
            header.push(format!("{name}_{unit}/s"));
            for col in ["p50_ms", "p99_ms", "max_ms"] {
                header.push(format!("{name}_{col}"));
            }
        }
    }
    if both {
        header.push(format!("ratio_{unit}/s"));
        header.push("ratio_p99".into());
    }
    let mut out = vec![header];
    for r in rows {
        let (s, e) = (median_figures(&r.shoal), median_figures(&r.etcd));
        let mut row = vec![r.clients.to_string()];
        for (f, present) in [(&s, has_shoal), (&e, has_etcd)] {
            if !present {
                continue;
            }
            match f {
                Some(f) => {
                    row.push(format!("{:.0}", f.per_second));
                    row.push(format!("{:.2}", ms(f.p50)));
                    row.push(format!("{:.2}", ms(f.p99)));
                    row.push(format!("{:.2}", ms(f.max)));
                }
                None => row.extend(std::iter::repeat_n("-".to_string(), 4)),
            }
        }
        if both {
            match (&s, &e) {
                (Some(s), Some(e)) if e.per_second > 0.0 && !e.p99.is_zero() => {
                    row.push(format!("{:.2}", s.per_second / e.per_second));
                    row.push(format!("{:.2}", s.p99.as_secs_f64() / e.p99.as_secs_f64()));
                }
                _ => row.extend(["-".to_string(), "-".to_string()]),
            }
        }
        out.push(row);
    }
    columns(&out)
}

/// Every run's throughput and p99 in the order they ran, per concurrency and system; `*`
/// marks a run that went first of its pair.
pub fn details(rows: &[Row], unit: &str) -> String {
    let mut out = vec![vec![
        "clients".to_string(),
        "system".to_string(),
        format!("{unit}/s by run"),
        "p99_ms by run".to_string(),
    ]];
    for r in rows {
        for (name, runs) in [("shoal", &r.shoal), ("etcd", &r.etcd)] {
            if runs.is_empty() {
                continue;
            }
            let mark = |run: &Run| if run.first { "*" } else { " " };
            let rate: Vec<String> = runs
                .iter()
                .map(|run| format!("{:.0}{}", run.figures.per_second, mark(run)))
                .collect();
            let p99: Vec<String> = runs
                .iter()
                .map(|run| format!("{:.2}{}", ms(run.figures.p99), mark(run)))
                .collect();
            out.push(vec![
                r.clients.to_string(),
                name.to_string(),
                rate.join(" "),
                p99.join(" "),
            ]);
        }
    }
    columns(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [System; 2] = [System::Shoal, System::Etcd];

    fn fig(per_second: f64, p99_ms: u64) -> Figures {
        Figures {
            ops: per_second as usize,
            per_second,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(p99_ms),
            max: Duration::from_millis(p99_ms * 2),
        }
    }

    #[test]
    fn the_schedule_alternates_which_system_goes_first() {
        let s = schedule(&[1, 16, 64], 3, &BOTH);
        assert_eq!(s.len(), 18);
        // Pairs of consecutive slots: one of each system, and the leader alternates (ABBA…).
        let firsts: Vec<System> = s
            .chunks(2)
            .map(|pair| {
                assert_ne!(pair[0].system, pair[1].system);
                assert_eq!((pair[0].first, pair[1].first), (true, false));
                assert_eq!(
                    (pair[0].clients, pair[0].run),
                    (pair[1].clients, pair[1].run)
                );
                pair[0].system
            })
            .collect();
        for w in firsts.windows(2) {
            assert_ne!(w[0], w[1], "{firsts:?}");
        }
        // Every configuration runs three times, and at each concurrency both systems lead.
        for n in [1, 16, 64] {
            for sys in BOTH {
                let mine: Vec<&Slot> = s
                    .iter()
                    .filter(|x| x.clients == n && x.system == sys)
                    .collect();
                assert_eq!(mine.len(), 3);
                assert_eq!(mine.iter().map(|x| x.run).collect::<Vec<_>>(), [0, 1, 2]);
                assert!(mine.iter().any(|x| x.first) && mine.iter().any(|x| !x.first));
            }
        }
    }

    #[test]
    fn one_system_runs_alone_in_order() {
        let s = schedule(&[1, 16], 2, &[System::Etcd]);
        let got: Vec<(usize, usize, bool)> =
            s.iter().map(|x| (x.clients, x.run, x.first)).collect();
        assert_eq!(
            got,
            [(1, 0, true), (1, 1, true), (16, 0, true), (16, 1, true)]
        );
    }

    #[test]
    fn medians_are_the_middle_value() {
        assert_eq!(median_of(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median_of(&[4, 1, 3, 2]), Some(2));
        assert_eq!(median_of::<f64>(&[]), None);
        let runs: Vec<Run> = [fig(100.0, 9), fig(300.0, 3), fig(200.0, 5)]
            .into_iter()
            .map(|figures| Run {
                figures,
                first: false,
            })
            .collect();
        let m = median_figures(&runs).unwrap();
        // Figure by figure: 200/s from one run, the p99 of 5 ms from the same here, the
        // max of 10 ms the middle of 18, 6, 10.
        assert_eq!(m.per_second, 200.0);
        assert_eq!(m.p99, Duration::from_millis(5));
        assert_eq!(m.max, Duration::from_millis(10));
        assert_eq!(median_figures(&[]), None);
    }

    fn results() -> Vec<Row> {
        let s = schedule(&[1], 3, &BOTH);
        // shoal 100, 300, 200 writes/s (p99 4 ms); etcd 400 writes/s (p99 2 ms) every time.
        let mut shoal = [fig(100.0, 4), fig(300.0, 4), fig(200.0, 4)].into_iter();
        collect(
            s.into_iter()
                .map(|slot| {
                    let f = match slot.system {
                        System::Shoal => shoal.next().unwrap(),
                        System::Etcd => fig(400.0, 2),
                    };
                    (slot, f)
                })
                .collect(),
        )
    }

    #[test]
    fn the_table_shows_medians_and_ratios() {
        let rows = results();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].shoal.len(), rows[0].etcd.len()), (3, 3));
        let t = table(&rows, "writes");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("clients  shoal_writes/s"), "{t}");
        assert!(lines[0].ends_with("ratio_writes/s  ratio_p99"), "{t}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        // clients, shoal median 200/s, p50, p99 4, max 8, etcd 400/s, …, ratios 0.5 and 2.
        assert_eq!(cells[0], "1");
        assert_eq!(cells[1], "200");
        assert_eq!(cells[3], "4.00");
        assert_eq!(cells[5], "400");
        assert_eq!(&cells[9..], ["0.50", "2.00"]);
    }

    #[test]
    fn details_list_every_run_and_who_went_first() {
        let d = details(&results(), "reads");
        let lines: Vec<&str> = d.lines().collect();
        assert!(lines[0].contains("reads/s by run"), "{d}");
        // Pairs 0 and 2 start with shoal, pair 1 with etcd.
        assert!(lines[1].contains("shoal  100* 300  200*"), "{d}");
        assert!(lines[2].contains("etcd  400  400* 400 "), "{d}");
    }

    #[test]
    fn a_single_system_table_has_no_ratio() {
        let rows = collect(vec![(
            Slot {
                clients: 16,
                run: 0,
                system: System::Shoal,
                first: true,
            },
            fig(100.0, 4),
        )]);
        let t = table(&rows, "writes");
        assert!(!t.contains("etcd") && !t.contains("ratio"), "{t}");
    }
}
