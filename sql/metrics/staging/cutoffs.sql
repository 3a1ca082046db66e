-- One row = one cut-off k of the evaluation (variable ks).
select unnest(getvariable('ks'))::INTEGER as k
