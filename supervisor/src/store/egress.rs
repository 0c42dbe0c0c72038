//! Egress rules, the egress log and the synthetic-address map (see
//! `crate::egress`). Rows written by an older or newer clawpen that do not
//! parse are skipped with a warning rather than failing the whole list.

use std::net::Ipv4Addr;

use clawpen_api::{
    EgressAction, EgressLogEntry, EgressLogProto, EgressProto, EgressRule, EgressTarget,
    NewEgressRule, PortRange, VmName,
};
use rusqlite::{params, Connection};

use super::{Store, StoreError};

fn query_err(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn action_from(raw: &str) -> Option<EgressAction> {
    match raw {
        "allow" => Some(EgressAction::Allow),
        "deny" => Some(EgressAction::Deny),
        _ => None,
    }
}

type RuleRow = (i64, String, String, Option<String>, Option<String>, i64);

fn decode_rule((id, action, target, ports, proto, created): RuleRow) -> Option<EgressRule> {
    let rule = EgressRule {
        id: u64::try_from(id).ok()?,
        action: action_from(&action)?,
        target: EgressTarget::parse(&target).ok()?,
        ports: match ports {
            Some(p) => Some(PortRange::parse(&p).ok()?),
            None => None,
        },
        proto: match proto {
            Some(p) => Some(p.parse::<EgressProto>().ok()?),
            None => None,
        },
        created_unix: created.max(0) as u64,
    };
    Some(rule)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

impl Store {
    /// Adds a rule to a VM (which must exist) and returns it as stored.
    pub fn insert_egress_rule(
        &self,
        vm: &VmName,
        rule: &NewEgressRule,
    ) -> Result<EgressRule, StoreError> {
        self.with(|conn| {
            let created = now_unix();
            conn.execute(
                "INSERT INTO egress_rules (vm, action, target, ports, proto, created_unix)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    vm.as_str(),
                    rule.action.as_str(),
                    rule.target.to_string(),
                    rule.ports.map(|p| p.to_string()),
                    rule.proto.map(|p| p.as_str()),
                    created
                ],
            )
            .map_err(query_err("insert egress rule"))?;
            Ok(EgressRule {
                id: conn.last_insert_rowid().max(0) as u64,
                action: rule.action,
                target: rule.target.clone(),
                ports: rule.ports,
                proto: rule.proto,
                created_unix: created as u64,
            })
        })
    }

    /// A VM's rules, oldest first.
    pub fn egress_rules(&self, vm: &VmName) -> Result<Vec<EgressRule>, StoreError> {
        self.with(|conn| {
            let err = query_err("list egress rules");
            let mut stmt = conn
                .prepare(
                    "SELECT id, action, target, ports, proto, created_unix FROM egress_rules
                     WHERE vm = ?1 ORDER BY id",
                )
                .map_err(&err)?;
            let rows = stmt
                .query_map(params![vm.as_str()], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .map_err(&err)?
                .collect::<Result<Vec<RuleRow>, _>>()
                .map_err(&err)?;
            Ok(rows
                .into_iter()
                .filter_map(|row| {
                    let id = row.0;
                    let rule = decode_rule(row);
                    if rule.is_none() {
                        tracing::warn!(vm = %vm, id, "unreadable egress rule skipped");
                    }
                    rule
                })
                .collect())
        })
    }

    /// Removes a rule; false if the VM has no rule with that id.
    pub fn delete_egress_rule(&self, vm: &VmName, id: u64) -> Result<bool, StoreError> {
        self.with(|conn| {
            let n = conn
                .execute(
                    "DELETE FROM egress_rules WHERE vm = ?1 AND id = ?2",
                    params![vm.as_str(), to_i64(id)],
                )
                .map_err(query_err("delete egress rule"))?;
            Ok(n > 0)
        })
    }

    /// Writes log entries (inserted, or updated by id when a flow ends) and
    /// synthetic addresses in one transaction. Entries of VMs that no longer
    /// exist are skipped.
    pub fn write_egress(
        &self,
        entries: &[EgressLogEntry],
        names: &[(VmName, Ipv4Addr, String)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        write_egress_tx(&mut conn, entries, names)
    }

    /// Keeps the newest `keep` log entries of each VM.
    pub fn prune_egress_log(&self, keep: u64) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM egress_log WHERE id IN (
                     SELECT id FROM (
                         SELECT id, ROW_NUMBER() OVER (PARTITION BY vm ORDER BY id DESC) AS n
                         FROM egress_log
                     ) WHERE n > ?1
                 )",
                params![to_i64(keep)],
            )
            .map_err(query_err("prune egress log"))?;
            Ok(())
        })
    }

    /// Log entries of a VM in id order: those after `after`, or the newest
    /// `limit` ones.
    pub fn egress_log(
        &self,
        vm: &VmName,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<EgressLogEntry>, StoreError> {
        self.with(|conn| {
            let err = query_err("read egress log");
            let columns = "id, vm, time_unix_ms, proto, name, addr, port, decision, rule, reason,
                           bytes_up, bytes_down, ended_unix_ms";
            let sql = match after {
                Some(_) => format!(
                    "SELECT {columns} FROM egress_log WHERE vm = ?1 AND id > ?2
                     ORDER BY id LIMIT ?3"
                ),
                None => format!(
                    "SELECT * FROM (SELECT {columns} FROM egress_log WHERE vm = ?1 AND ?2 = ?2
                     ORDER BY id DESC LIMIT ?3) ORDER BY id"
                ),
            };
            let mut stmt = conn.prepare(&sql).map_err(&err)?;
            let rows = stmt
                .query_map(
                    params![vm.as_str(), to_i64(after.unwrap_or(0)), i64::from(limit)],
                    decode_log_row,
                )
                .map_err(&err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)?;
            Ok(rows.into_iter().flatten().collect())
        })
    }

    /// The largest log id so far (0 for none), so new ids continue after it.
    pub fn max_egress_log_id(&self) -> Result<u64, StoreError> {
        self.with(|conn| {
            let max: Option<i64> = conn
                .query_row("SELECT MAX(id) FROM egress_log", [], |r| r.get(0))
                .map_err(query_err("max egress log id"))?;
            Ok(opt_u64(max).unwrap_or(0))
        })
    }

    /// A VM's synthetic addresses.
    pub fn egress_names(&self, vm: &VmName) -> Result<Vec<(Ipv4Addr, String)>, StoreError> {
        self.with(|conn| {
            let err = query_err("list egress names");
            let mut stmt = conn
                .prepare("SELECT addr, name FROM egress_names WHERE vm = ?1")
                .map_err(&err)?;
            let rows = stmt
                .query_map(params![vm.as_str()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(&err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)?;
            Ok(rows
                .into_iter()
                .filter_map(|(addr, name)| Some((addr.parse().ok()?, name)))
                .collect())
        })
    }
}

fn write_egress_tx(
    conn: &mut Connection,
    entries: &[EgressLogEntry],
    names: &[(VmName, Ipv4Addr, String)],
) -> Result<(), StoreError> {
    let err = query_err("write egress log");
    let tx = conn.transaction().map_err(&err)?;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO egress_log (id, vm, time_unix_ms, proto, name, addr, port, decision,
                     rule, reason, bytes_up, bytes_down, ended_unix_ms)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13
                 WHERE EXISTS (SELECT 1 FROM vms WHERE name = ?2)
                 ON CONFLICT(id) DO UPDATE SET decision = excluded.decision,
                     rule = excluded.rule, reason = excluded.reason, addr = excluded.addr,
                     bytes_up = excluded.bytes_up, bytes_down = excluded.bytes_down,
                     ended_unix_ms = excluded.ended_unix_ms",
            )
            .map_err(&err)?;
        for e in entries {
            insert
                .execute(params![
                    to_i64(e.id),
                    e.vm.as_str(),
                    to_i64(e.time_unix_ms),
                    e.proto.as_str(),
                    e.name,
                    e.addr,
                    e.port,
                    e.decision.as_str(),
                    e.rule.map(to_i64),
                    e.reason,
                    e.bytes_up.map(to_i64),
                    e.bytes_down.map(to_i64),
                    e.ended_unix_ms.map(to_i64),
                ])
                .map_err(&err)?;
        }
        let mut name = tx
            .prepare_cached(
                "INSERT INTO egress_names (vm, addr, name) SELECT ?1, ?2, ?3
                 WHERE EXISTS (SELECT 1 FROM vms WHERE name = ?1)
                 ON CONFLICT(vm, addr) DO UPDATE SET name = excluded.name",
            )
            .map_err(&err)?;
        for (vm, addr, n) in names {
            name.execute(params![vm.as_str(), addr.to_string(), n])
                .map_err(&err)?;
        }
    }
    tx.commit().map_err(&err)
}

fn decode_log_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<EgressLogEntry>> {
    let vm: String = r.get(1)?;
    let proto: String = r.get(3)?;
    let decision: String = r.get(7)?;
    let port: Option<i64> = r.get(6)?;
    let (Ok(vm), Some(proto), Some(decision)) = (
        VmName::parse(&vm),
        EgressLogProto::parse(&proto),
        action_from(&decision),
    ) else {
        return Ok(None);
    };
    Ok(Some(EgressLogEntry {
        id: opt_u64(r.get(0)?).unwrap_or(0),
        vm,
        time_unix_ms: opt_u64(r.get(2)?).unwrap_or(0),
        proto,
        name: r.get(4)?,
        addr: r.get(5)?,
        port: port.and_then(|p| u16::try_from(p).ok()),
        decision,
        rule: opt_u64(r.get(8)?),
        reason: r.get(9)?,
        bytes_up: opt_u64(r.get(10)?),
        bytes_down: opt_u64(r.get(11)?),
        ended_unix_ms: opt_u64(r.get(12)?),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clawpen_api::VmSpec;

    fn store_with_vm() -> (tempfile::TempDir, Store, VmName) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let name = VmName::parse("a").unwrap();
        store
            .insert_vm(&VmSpec {
                name: name.clone(),
                image: "test-guest".into(),
                cpus: 1,
                memory_mib: 256,
                disk_gib: None,
            })
            .unwrap();
        (dir, store, name)
    }

    fn entry(id: u64, vm: &VmName) -> EgressLogEntry {
        EgressLogEntry {
            id,
            vm: vm.clone(),
            time_unix_ms: 1000 + id,
            proto: EgressLogProto::Tcp,
            name: Some("allowed.test".into()),
            addr: Some("127.0.0.1".into()),
            port: Some(80),
            decision: EgressAction::Allow,
            rule: Some(1),
            reason: "rule #1".into(),
            bytes_up: None,
            bytes_down: None,
            ended_unix_ms: None,
        }
    }

    #[test]
    fn rules_round_trip_and_go_with_their_vm() {
        let (_dir, store, vm) = store_with_vm();
        let rule: NewEgressRule = serde_json::from_str(
            r#"{"action":"allow","target":"*.github.com","ports":"443","proto":"tcp"}"#,
        )
        .unwrap();
        let stored = store.insert_egress_rule(&vm, &rule).unwrap();
        assert_eq!(store.egress_rules(&vm).unwrap(), vec![stored.clone()]);
        assert!(store.delete_egress_rule(&vm, stored.id).unwrap());
        assert!(!store.delete_egress_rule(&vm, stored.id).unwrap());
        let other = VmName::parse("nope").unwrap();
        assert!(
            store.insert_egress_rule(&other, &rule).is_err(),
            "FK to vms"
        );
    }

    #[test]
    fn log_upserts_pages_and_prunes() {
        let (_dir, store, vm) = store_with_vm();
        let entries: Vec<_> = (1..=5).map(|i| entry(i, &vm)).collect();
        let gone = VmName::parse("gone").unwrap();
        store
            .write_egress(
                &entries,
                &[(vm.clone(), Ipv4Addr::new(198, 18, 0, 3), "x.test".into())],
            )
            .unwrap();
        store.write_egress(&[entry(9, &gone)], &[]).unwrap();
        let mut ended = entry(2, &vm);
        ended.bytes_up = Some(10);
        ended.bytes_down = Some(20);
        ended.ended_unix_ms = Some(5000);
        store.write_egress(&[ended.clone()], &[]).unwrap();
        let all = store.egress_log(&vm, None, 100).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[1], ended);
        assert_eq!(store.egress_log(&vm, None, 2).unwrap()[0].id, 4);
        assert_eq!(store.egress_log(&vm, Some(3), 100).unwrap().len(), 2);
        assert_eq!(
            store.max_egress_log_id().unwrap(),
            5,
            "the deleted VM's entry was skipped"
        );
        assert_eq!(
            store.egress_names(&vm).unwrap(),
            vec![(Ipv4Addr::new(198, 18, 0, 3), "x.test".to_string())]
        );
        store.prune_egress_log(2).unwrap();
        assert_eq!(store.egress_log(&vm, None, 100).unwrap().len(), 2);
        store.delete_vm(&vm).unwrap();
        assert!(store.egress_log(&vm, None, 100).unwrap().is_empty());
        assert!(store.egress_names(&vm).unwrap().is_empty());
    }
}
