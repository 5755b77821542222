// A realistic fhir-kit-client session against a live server: node scenario.mjs BASE_URL.
// Prints one JSON object with what was observed; the Python test asserts on it.
import { Client } from 'fhir-kit-client';

const client = new Client({ baseUrl: process.argv[2] });
const out = {};

const capability = await client.capabilityStatement();
out.fhirVersion = capability.fhirVersion;

const patient = await client.create({
  resourceType: 'Patient',
  body: { resourceType: 'Patient', name: [{ family: 'Kit', given: ['Node'] }], gender: 'female' },
});
out.patientVersion = patient.meta.versionId;

for (let i = 0; i < 5; i += 1) {
  await client.create({
    resourceType: 'Observation',
    body: {
      resourceType: 'Observation', status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
      subject: { reference: `Patient/${patient.id}` },
      valueQuantity: { value: 60 + i, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    },
  });
}

let page = await client.search({ resourceType: 'Observation', searchParams: { subject: `Patient/${patient.id}`, _count: 2 } });
out.total = page.total;
const seen = page.entry.map((e) => e.resource.id);
while (page.link.some((l) => l.relation === 'next')) {
  page = await client.nextPage({ bundle: page });
  seen.push(...page.entry.map((e) => e.resource.id));
}
out.paged = new Set(seen).size;

const updated = await client.update({
  resourceType: 'Patient', id: patient.id, body: { ...patient, gender: 'male' },
  options: { headers: { 'If-Match': `W/"${patient.meta.versionId}"` } },
});
out.updatedVersion = updated.meta.versionId;
try {
  await client.update({
    resourceType: 'Patient', id: patient.id, body: { ...patient, gender: 'other' },
    options: { headers: { 'If-Match': 'W/"1"' } },
  });
  out.staleStatus = 200;
} catch (err) {
  out.staleStatus = err.response.status;
}

const patched = await client.patch({
  resourceType: 'Patient', id: patient.id, jsonPatch: [{ op: 'add', path: '/birthDate', value: '1980-02-03' }],
});
out.patchedBirthDate = patched.birthDate;

const tx = await client.transaction({
  body: {
    resourceType: 'Bundle', type: 'transaction',
    entry: [
      { fullUrl: 'urn:uuid:0f6f1c8e-1d2b-4f3a-9a51-000000000001',
        resource: { resourceType: 'Patient', name: [{ family: 'Tx' }] }, request: { method: 'POST', url: 'Patient' } },
      { resource: { resourceType: 'Observation', status: 'final', code: { text: 'note' },
                    subject: { reference: 'urn:uuid:0f6f1c8e-1d2b-4f3a-9a51-000000000001' } },
        request: { method: 'POST', url: 'Observation' } },
    ],
  },
});
out.txStatuses = tx.entry.map((e) => e.response.status);
out.txLinked = tx.entry[1].resource.subject.reference === `Patient/${tx.entry[0].resource.id}`;

const history = await client.history({ resourceType: 'Patient', id: patient.id });
out.historyTotal = history.total;

await client.delete({ resourceType: 'Patient', id: patient.id });
try {
  await client.read({ resourceType: 'Patient', id: patient.id });
  out.readAfterDelete = 200;
} catch (err) {
  out.readAfterDelete = err.response.status;
}
console.log(JSON.stringify(out));
