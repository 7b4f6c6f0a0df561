module kwarm.invalid/bench/gosleep

go 1.22
