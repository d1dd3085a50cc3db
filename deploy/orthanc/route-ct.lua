-- Orthanc routing rule for a jnsc node (deploy/orthanc/orthanc.json loads it).
--
-- Every series that has been stable for "StableAge" seconds is looked at once. Only CT series are
-- forwarded to the DICOM modality "jnsc" (an entry of "DicomModalities"). The node sends its
-- results (a DICOM SEG and a TID 1500 SR) back to the calling AE, i.e. to this Orthanc; those are
-- not CT, so they are only stored here and never sent to the node again: nothing loops.
--
-- The log names the Orthanc series ID, the SeriesInstanceUID and the number of instances, never
-- patient attributes.

local TARGET = 'jnsc'

function OnStableSeries(seriesId, tags, metadata)
  local modality = tags['Modality'] or ''
  local uid = tags['SeriesInstanceUID'] or '?'
  if modality ~= 'CT' then
    print('route-ct: series ' .. seriesId .. ' (' .. uid .. ') modality ' .. modality ..
          ': not sent to ' .. TARGET)
    return
  end
  local series = ParseJson(RestApiGet('/series/' .. seriesId))
  local count = 0
  if series ~= nil and series['Instances'] ~= nil then
    count = #series['Instances']
  end
  print('route-ct: sending CT series ' .. seriesId .. ' (' .. uid .. ', ' .. count ..
        ' instances) to ' .. TARGET)
  -- C-STORE of the whole series as an Orthanc job (GET /jobs/ID shows its state; Orthanc logs
  -- a failure), so the Lua engine is not blocked while it runs.
  local body = DumpJson({ Resources = { seriesId }, Asynchronous = true }, true)
  local job = ParseJson(RestApiPost('/modalities/' .. TARGET .. '/store', body))
  print('route-ct: job ' .. tostring(job and job['ID']) .. ' sends series ' .. seriesId ..
        ' to ' .. TARGET)
end
