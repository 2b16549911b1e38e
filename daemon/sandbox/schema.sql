-- Reference platform database (SPEC §8), as the reference server keeps it.
--
-- Platform tables carry the names and columns §8 lists (plus a few the real platform
-- also has, e.g. names of sections). Tables prefixed `refserver_` are private to the
-- reference server: clients never read them.
--
-- Conventions the reference server follows (tests may rely on them):
-- * realograms_implementation_scan.provided_values = {"_raw_data": <create payload>};
--   the capture time is provided_values->'_raw_data'->>'captured_at' (ISO 8601).
-- * planograms_compliance_planogramcompliancereport.scan_created_date is the scan's
--   capture time; storeplanogramcompliance has one row per (store_planogram_id, date)
--   with date = scan_created_date::date (the latest processed scan of that day wins).
-- * Percentages (compliance_rate, pre/post compliance, pre/post OSA, compliance_rates
--   ->osa) are 0..100. compliance_rate equals post_compliance.
-- * compliance_rates = {"correct", "wandering", "missing", "empty", "osa"}:
--   OK = correct, wandering = wandering, OOS = missing, hole = empty.
-- * A realogram has one compliance report per section (one bay each); reports of one
--   store planogram and day share its storeplanogramcompliance row.
-- * A section is additional when one of its products has action or merch_method
--   LIKE '%additional%' (values are lower case).

CREATE TABLE IF NOT EXISTS master_data_implementation_store (
    id   serial PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE IF NOT EXISTS master_data_implementation_category (
    id   serial PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE IF NOT EXISTS planograms_implementation_planogram (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    category_id integer REFERENCES master_data_implementation_category (id)
);

CREATE TABLE IF NOT EXISTS planograms_implementation_planogramstore (
    id           serial PRIMARY KEY,
    planogram_id integer NOT NULL REFERENCES planograms_implementation_planogram (id),
    store_id     integer NOT NULL REFERENCES master_data_implementation_store (id),
    UNIQUE (planogram_id, store_id)
);

CREATE TABLE IF NOT EXISTS planograms_implementation_planogramsection (
    id           serial PRIMARY KEY,
    planogram_id integer NOT NULL REFERENCES planograms_implementation_planogram (id),
    name         text NOT NULL
);

CREATE TABLE IF NOT EXISTS planograms_implementation_planogramsectionproduct (
    id           serial PRIMARY KEY,
    section_id   integer NOT NULL REFERENCES planograms_implementation_planogramsection (id),
    product_ean  text NOT NULL,
    action       text,
    merch_method text
);

CREATE TABLE IF NOT EXISTS realograms_implementation_realogram (
    id         serial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS realograms_implementation_scan (
    id                   serial PRIMARY KEY,
    store_id             integer NOT NULL REFERENCES master_data_implementation_store (id),
    provided_values      jsonb NOT NULL DEFAULT '{}'::jsonb,
    selected_category_id integer REFERENCES master_data_implementation_category (id),
    active_realogram_id  integer REFERENCES realograms_implementation_realogram (id),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    status               text NOT NULL DEFAULT 'processing',
    has_report           boolean NOT NULL DEFAULT false
);

CREATE INDEX IF NOT EXISTS realograms_scan_store_idx
    ON realograms_implementation_scan (store_id);

CREATE TABLE IF NOT EXISTS realograms_implementation_scanfile (
    id        serial PRIMARY KEY,
    scan_id   integer NOT NULL REFERENCES realograms_implementation_scan (id),
    file_id   integer NOT NULL,
    file_type text NOT NULL DEFAULT 'image'
);

CREATE INDEX IF NOT EXISTS realograms_scanfile_scan_idx
    ON realograms_implementation_scanfile (scan_id);

CREATE TABLE IF NOT EXISTS planograms_compliance_planogramcompliancereport (
    id                 serial PRIMARY KEY,
    realogram_id       integer NOT NULL REFERENCES realograms_implementation_realogram (id),
    section_id         integer,
    section_name       text,
    store_planogram_id integer,
    planogram_id       integer,
    aisle_name         text,
    compliance_rate    double precision,
    compliance_rates   jsonb NOT NULL DEFAULT '{}'::jsonb,
    scan_created_date  timestamptz
);

CREATE INDEX IF NOT EXISTS planograms_report_realogram_idx
    ON planograms_compliance_planogramcompliancereport (realogram_id);

-- A realogram's bays; the reference server writes one bay per compliance report.
CREATE TABLE IF NOT EXISTS realograms_implementation_realogrambay (
    id           serial PRIMARY KEY,
    realogram_id integer NOT NULL REFERENCES realograms_implementation_realogram (id)
);

-- Majority v2 runs: the newest row of a store planogram maps scan IDs (as text) to
-- {"map_by": ...}; a scan it did not map is not listed.
CREATE TABLE IF NOT EXISTS planograms_compliance_majorityv2log (
    id                 serial PRIMARY KEY,
    store_planogram_id integer NOT NULL,
    scan_created_date  timestamptz,
    data               jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX IF NOT EXISTS planograms_majorityv2log_spid_idx
    ON planograms_compliance_majorityv2log (store_planogram_id, scan_created_date);

CREATE TABLE IF NOT EXISTS planograms_compliance_storeplanogramcompliance (
    id                 serial PRIMARY KEY,
    store_planogram_id integer NOT NULL,
    date               date NOT NULL,
    pre_osa            double precision,
    post_osa           double precision,
    pre_compliance     double precision,
    post_compliance    double precision,
    UNIQUE (store_planogram_id, date)
);

-- Server-private tables -------------------------------------------------------------

CREATE TABLE IF NOT EXISTS refserver_user (
    id       serial PRIMARY KEY,
    username text NOT NULL UNIQUE,
    password text NOT NULL
);

CREATE TABLE IF NOT EXISTS refserver_token (
    key        text PRIMARY KEY,
    user_id    integer NOT NULL REFERENCES refserver_user (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    expired    boolean NOT NULL DEFAULT false
);

-- Every file the server can serve: seeded ones and uploads. Uploads are files too, so
-- an upload id is a file id (scanfile.file_id) and GET file-upload/{id}/ serves it.
-- storage: 'disk' (bytes at path, relative to the data dir) or 'generated' (produced
-- on the fly from gen_key, for big files that never touch the disk).
CREATE TABLE IF NOT EXISTS refserver_file (
    id                serial PRIMARY KEY,
    original_filename text NOT NULL,
    input_type        text NOT NULL DEFAULT 'image',
    storage           text NOT NULL CHECK (storage IN ('disk', 'generated')),
    path              text,
    gen_key           text,
    header            bytea,
    size              bigint NOT NULL,
    sha256            text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
