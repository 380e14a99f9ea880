//! Ring statistics (issue #17; docs/design.md "Ring statistics") through ten real `peerpost
//! run` processes: `peerpost stats` shows the totals of the nodes that share, and the three
//! that set `stats.share = false` sent nothing.

use std::time::Duration;

use crate::flow::Node;

#[test]
fn ten_nodes_three_opted_out_show_seven_and_the_three_send_nothing() {
    let _heavy = crate::util::one_heavy_at_a_time();
    let every = [("every = \"1h\"", "every = \"6s\"")];
    let opted_out = [
        ("every = \"1h\"", "every = \"6s\""),
        ("share = true", "share = false"),
    ];
    let mut nodes: Vec<Node> = (0..10)
        .map(|i| {
            let tune: &[(&str, &str)] = if i >= 7 { &opted_out } else { &every };
            let mut n = Node::new(&format!("n{i}@stats.test"), tune);
            n.log_filter = Some("warn,peerpost::overlay::stats=debug".into());
            n
        })
        .collect();
    nodes[0].start(None);
    let boot = nodes[0].listen.clone();
    for n in nodes.iter_mut().skip(1) {
        n.start(Some(&boot));
    }
    // A round's totals are ready one round after it: wait for a complete one with all seven.
    let mut last = String::new();
    let stats = (0..90)
        .find_map(|_| {
            std::thread::sleep(Duration::from_secs(1));
            let r = nodes[3].home.run(&["stats", "--json"]);
            last = format!("{}{}", r.stdout(), r.stderr());
            let v: serde_json::Value = serde_json::from_str(&r.stdout()).ok()?;
            (v["complete"] == true && v["nodes"] == 7).then_some(v)
        })
        .unwrap_or_else(|| panic!("no complete round with 7 nodes; last answer: {last}"));
    // The figures are the nodes' own: seven default contributions, all reachable (loopback).
    assert_eq!(stats["offered_bytes"], 7u64 * (10 << 30), "{stats}");
    assert_eq!(stats["reachable"], 7, "{stats}");
    assert_eq!(stats["nated"], 0, "{stats}");
    assert_eq!(stats["shares"], 21, "three shares per node: {stats}");
    let versions = stats["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{stats}");
    assert_eq!(versions[0][0], env!("CARGO_PKG_VERSION"));
    // The human form, from an opted-out node (it can still read the ring's totals).
    let out = nodes[8].home.run(&["stats"]).success().stdout();
    assert!(out.contains("sharing statistics"), "{out}");
    assert!(out.contains("stats.share = false"), "{out}");
    for n in &mut nodes {
        n.stop();
    }
    // On the wire, as the logs tell: the three opted out sent no share and no sum.
    for (i, n) in nodes.iter().enumerate() {
        let log = std::fs::read_to_string(n.home.path("node.log")).unwrap_or_default();
        if i >= 7 {
            assert!(
                log.contains("not sharing ring statistics"),
                "{}: {log}",
                n.address
            );
            assert!(!log.contains("stats: shares sent"), "{}: {log}", n.address);
            assert!(
                !log.contains("stats: held shares summed"),
                "{}: {log}",
                n.address
            );
        } else {
            assert!(log.contains("stats: shares sent"), "{}: {log}", n.address);
        }
    }
}
