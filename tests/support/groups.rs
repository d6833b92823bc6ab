//! Consumer groups as the brokers see them, through Apache Kafka's own tool
//! (`kafka-consumer-groups.sh`, in the official image and in ours at the same path).

use std::collections::BTreeMap;

/// Whether the broker container has Apache Kafka's tools (the embedded broker's image, the
/// `--embedded-broker` lane of scripts/test.sh, has none).
pub async fn has_tools(container: &str) -> bool {
    tokio::process::Command::new("docker")
        .args([
            "exec",
            container,
            "test",
            "-x",
            "/opt/kafka/bin/kafka-consumer-groups.sh",
        ])
        .status()
        .await
        .is_ok_and(|status| status.success())
}

/// The members of `group` (`"<client id> <consumer id>"` → partitions held), asked of the
/// broker in `container` at `bootstrap` (an address valid inside the container); `None` when
/// that broker does not answer.
pub async fn members(
    container: &str,
    bootstrap: &str,
    group: &str,
) -> Option<BTreeMap<String, usize>> {
    let output = tokio::process::Command::new("docker")
        .args([
            "exec",
            container,
            "/opt/kafka/bin/kafka-consumer-groups.sh",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--members",
            "--group",
            group,
        ])
        .output()
        .await
        .expect("docker exec");
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // GROUP CONSUMER-ID [GROUP-INSTANCE-ID] HOST CLIENT-ID #PARTITIONS: the instance id column
    // is there only with static members and blank for the others, so a line is read from
    // both ends.
    let mut members = BTreeMap::new();
    for line in text.lines().skip_while(|l| !l.starts_with("GROUP")).skip(1) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        if let [_, consumer, .., client, partitions] = columns.as_slice() {
            members.insert(
                format!("{client} {consumer}"),
                partitions.parse().unwrap_or_default(),
            );
        }
    }
    Some(members)
}
