//! Names of the kernel programs in the eBPF object.

/// tc (tcx) ingress on the host side of every pod veth: packets leaving a pod.
pub const FROM_POD: &str = "from_pod";
/// tc (tcx) ingress on the node's uplink: packets from other nodes and the outside.
pub const FROM_UPLINK: &str = "from_uplink";
/// XDP on the node's uplink: drops deny-listed sources and malformed frames first.
pub const UPLINK_FILTER: &str = "uplink_filter";
/// XDP on the node's uplink, `[uplink] xdp_deliver = true`: the prefilter, then frames for
/// local pods are redirected to the pod's veth at XDP instead of going on to tc.
pub const UPLINK_DELIVER: &str = "uplink_deliver";
/// Tail-called by the tc programs to write a log line (loaded only with a log level).
pub const LOG_TC: &str = "log_tc";
/// The program array the logger is put in.
pub const LOGGERS: &str = "LOGGERS";
