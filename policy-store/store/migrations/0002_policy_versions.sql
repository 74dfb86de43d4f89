-- Who stored each policy-set version, readable without decoding its document (version
-- history lists). Versions stored before this migration keep it in their document only.
ALTER TABLE policy_sets ADD COLUMN created_by TEXT;

-- The digest of the policies directory last stored by `serve` / `control`: the directory is
-- stored again only when it changes, so versions written through the admin API in between
-- survive restarts.
ALTER TABLE store_meta ADD COLUMN policies_dir_digest TEXT;
