"""The timing policies of an agent, in one place (as rclone keeps its pacer).

Every interval, delay and backoff an agent waits by is here with the reason for its value; the modules
that wait import it. No IO: the backoffs are functions of the attempt number, applied by their one user
(`agent.link` for reconnection, the source session for resync attempts).
"""

from __future__ import annotations

from types import SimpleNamespace

from tenacity import wait_exponential

# --- the broker connection (agent.link) ---------------------------------------------------------------
# Between rounds of reconnection attempts (agent.core.brokers): 0.2 s, 0.4 s, 0.8 s, then every 1 s.
# Capped at 1 s (it was 2): a broker that comes back is found within 1 s, which a short -rt needs
# (docs/timeouts.md: an outage uses up to one step plus brokerConnectTimeout beyond itself).
RECONNECT_BACKOFF = wait_exponential(multiplier=0.2, min=0.2, max=1)
# A connection that drops sooner than this after it came up does not reset the reconnection backoff: a
# broker that throws the agent out for something it sends at once (an oversized message) got thousands of
# reconnections a minute.
STABLE_CONNECTION = 5.0
# A subscription the broker refuses (SUBACK 0x80) is asked for again, this many times in all, this far apart,
# before the agent logs an ERROR and goes on without it. A NATS 2.9 cluster that lost a node refuses about 4 in
# 10 new QoS 1 subscriptions (after 4 s each) for as long as the node is away (docs/brokers.md, "A NATS
# cluster"); one refused 8 times in a row is an ACL's refusal, not that.
SUBSCRIBE_ATTEMPTS = 8
SUBSCRIBE_RETRY_DELAY = 0.2

# --- a recovering transfer (source side) -----------------------------------------------------------------
# Between resync attempts of a recovering transfer: 0.5 s, 1 s, 2 s, 4 s, then every 5 s.
RESYNC_BACKOFF = wait_exponential(multiplier=0.5, min=0.5, max=5)
# From entering recovery to the first resync attempt: soon, but after the publishes already under way have
# failed or gone (a resync sent at once would often meet the same lost connection).
RESYNC_FIRST_DELAY = 0.2
# The longest a resync waits for its answer before it counts as unanswered (bounded by agentAckTimeout).
RESYNC_WAIT = 5.0

# --- what a running transfer publishes and saves ---------------------------------------------------------
PROGRESS_INTERVAL = 0.5  # seconds between two progress messages of a transfer
CHECKPOINT_INTERVAL = 0.5  # seconds between two checkpoints of a transfer's offsets in the state store
RESULTS_INTERVAL = 0.5  # seconds a file result may wait to be sent with others
RESULTS_BATCH = 500  # file results sent at once at most

# --- the agent -------------------------------------------------------------------------------------------
# A finished transfer's outcome is sent again this often to a destination that has not acknowledged it.
COMPLETE_RETRY_INTERVAL = 15.0
# The agent's retained heartbeat (<prefix>/Agents/<agent>/heard) is published this often while connected: once
# its last will says UNREACHABLE, the clients show when it was last heard from (its status then is the will).
HEARD_INTERVAL = 30.0
STATUS_MIN_INTERVAL = 1.0  # seconds between two publications of the agent's own status
# After each connection the agent publishes its status once more this much later: a last will of a connection
# it abandoned (a node of a cluster that took the CONNECT but answered too late, or a session taken over from
# a dead node) can be retained after the first publication, on a node whose copy the agent never reads.
STATUS_REASSERT_AFTER_CONNECT = 10.0
PEER_WAIT = 2.0  # seconds a new transfer waits for the status of a destination agent not known yet
# How often a status publication held back by STATUS_MIN_INTERVAL looks whether the word changed meanwhile.
STATUS_WORD_POLL = 0.2
STOP_POLL = 0.5  # seconds between looks at the transfers a controlled stop waits for
# Drops of untrusted messages are logged once per reason per interval: a flood costs one line a second.
DROP_LOG_INTERVAL = 1.0


def _backoff(policy: wait_exponential, attempt: int) -> float:
    return float(policy(SimpleNamespace(attempt_number=max(1, attempt))))  # type: ignore[arg-type]


def resync_delay(attempt: int) -> float:
    """Seconds to wait before resync attempt number `attempt` (1-based)."""
    return _backoff(RESYNC_BACKOFF, attempt)


def reconnect_delay(attempt: int) -> float:
    """Seconds to wait before reconnection attempt number `attempt` (1-based)."""
    return _backoff(RECONNECT_BACKOFF, attempt)

# --- the template keeper (agent.template_keeper) ---------------------------------------------------------
# After a connection, how long the keeper waits for the broker's retained templates and epoch marker before
# it compares them with what it keeps: they come at once after the subscription; 2 s is ample on a loaded
# machine and keeps a restarted broker's templates back within a few seconds of its return.
KEEPER_SETTLE = 2.0
# A keeper that finds the broker lost its templates waits a random 0..KEEPER_JITTER s, then republishes only
# those still absent: of N agents, the first does the work and the others find little or nothing to do.
KEEPER_JITTER = 3.0

# --- resource monitors (agent.monitor_host) ----------------------------------------------------------------
# A running monitor's retained view (its polls and last_poll, read by fte-list-monitors) is published again
# after its first poll and then at most this often: current to a few seconds, without a message a poll.
MONITOR_VIEW_INTERVAL = 5.0

# --- fan-out, the destination (agent.fanout_destination) ----------------------------------------------------
# How long a destination waits for the SUBACK of a fan-out transfer's shared topic before it answers the offer
# without it (unicast only for that leg): one round trip on a healthy broker; bounded, since the wait holds up
# the link's worker (subscribe_granted asks again after a refusal, which this includes).
FANOUT_SUBSCRIBE_WAIT = 10.0
