-- wrk script: request the paths listed (one per line) in the file named by env WRK_PATHS, in turn.
local paths = {}
local n = 0
init = function(args)
  for line in io.lines(os.getenv("WRK_PATHS")) do
    n = n + 1
    paths[n] = line
  end
end
local i = 0
request = function()
  i = i % n + 1
  return wrk.format("GET", paths[i])
end
