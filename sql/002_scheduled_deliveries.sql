-- The durable retry schedule, and pausing a tracking code.
--
-- A delivery lands in scheduled_deliveries when an attempt fails and may be retried, when it
-- cannot be attempted right now (its tracking code paused, its circuit breaker open, its
-- share of the in-flight window full, or an earlier delivery of the same test still waiting),
-- and when it fails for good (state 'dead', kept so that it can be replayed). A delivered or
-- skipped delivery's row is deleted.
--
-- Instances claim due rows with FOR UPDATE SKIP LOCKED and hold them by a lease
-- (locked_by, locked_until) while the attempt runs; a lease that runs out (the instance died)
-- makes the row claimable again. Per test, only the pending row with the lowest id is
-- claimable, so a test's deliveries go out in the order they joined the schedule.

ALTER TABLE tracking_codes
    ADD COLUMN paused boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN tracking_codes.paused IS
    'While true no attempt is made for this code: its deliveries wait in scheduled_deliveries';

CREATE TABLE scheduled_deliveries (
    id                bigserial PRIMARY KEY,
    event_id          text NOT NULL,
    test_id           text NOT NULL,
    tracking_code     text NOT NULL,
    trigger           text NOT NULL,
    event             bytea NOT NULL,         -- the event's value bytes, as consumed
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    state             text NOT NULL DEFAULT 'pending',
    attempts          integer NOT NULL DEFAULT 0,  -- HTTP attempts made
    step              integer NOT NULL DEFAULT 0,  -- steps of RETRY_SCHEDULE used
    due_at            timestamptz NOT NULL,
    reason            text,                   -- the last failure or deferral
    http_status       integer,                -- of the last attempt
    endpoint_host     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    last_attempt_at   timestamptz,
    failed_at         timestamptz,            -- when it went dead
    replays           integer NOT NULL DEFAULT 0,
    locked_by         text,
    locked_until      timestamptz,

    CONSTRAINT scheduled_deliveries_event_id_unique UNIQUE (event_id),
    CONSTRAINT scheduled_deliveries_state_known CHECK (state IN ('pending', 'dead')),
    CONSTRAINT scheduled_deliveries_counts CHECK (attempts >= 0 AND step >= 0 AND replays >= 0)
);

COMMENT ON TABLE scheduled_deliveries IS
    'Webhook deliveries waiting for an attempt (pending) or failed for good (dead)';

-- Claiming: due pending rows, earliest first.
CREATE INDEX scheduled_deliveries_due
    ON scheduled_deliveries (due_at, id) WHERE state = 'pending';
-- Order per test: is there an earlier pending row of this test?
CREATE INDEX scheduled_deliveries_test
    ON scheduled_deliveries (test_id, id) WHERE state = 'pending';
-- The tests with waiting deliveries of a partition, loaded when it is assigned.
CREATE INDEX scheduled_deliveries_source
    ON scheduled_deliveries (source_topic, source_partition) WHERE state = 'pending';
-- Listing and replaying by tracking code.
CREATE INDEX scheduled_deliveries_code
    ON scheduled_deliveries (tracking_code, state, id);

CREATE TRIGGER scheduled_deliveries_updated_at
    BEFORE UPDATE ON scheduled_deliveries
    FOR EACH ROW
    EXECUTE FUNCTION tracking_codes_touch_updated_at();
