// Checks the types of an installed @pushpull/client against its code, with the TypeScript
// compiler:
//   1. `usage.ts`, written as an application would, type-checks under `strict` (and each
//      `@ts-expect-error` line is an error the types must catch);
//   2. what the declarations export is what the module exports, and each declared class has
//      the methods and accessors it declares.
//
//   node check-types.mjs PROJECT_DIR      (PROJECT_DIR has node_modules/@pushpull/client and usage.ts)
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import ts from 'typescript';

const project = process.argv[2];
const problems = [];

// 1. The application's view.
const program = ts.createProgram([join(project, 'usage.ts')], {
  strict: true,
  noEmit: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  lib: ['lib.es2022.d.ts', 'lib.dom.d.ts', 'lib.dom.iterable.d.ts', 'lib.dom.asynciterable.d.ts'],
  types: [],
});
for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
  const where = diagnostic.file
    ? `${diagnostic.file.fileName}:${diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start).line + 1}: `
    : '';
  problems.push(where + ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n'));
}

// 2. The declarations against the code.
const packageDir = join(project, 'node_modules', '@pushpull', 'client');
const declarations = program.getSourceFile(join(packageDir, 'pushpull.d.ts'));
if (!declarations) {
  problems.push('usage.ts did not resolve @pushpull/client to pushpull.d.ts');
} else {
  const declared = new Map(); // name -> { kind, members }
  const exported = (node) => node.modifiers?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword);
  for (const statement of declarations.statements) {
    if (!exported(statement)) continue;
    if (ts.isFunctionDeclaration(statement)) declared.set(statement.name.text, { kind: 'function' });
    else if (ts.isClassDeclaration(statement)) {
      const members = new Set();
      for (const member of statement.members) {
        if (!member.name || ts.isComputedPropertyName(member.name)) continue;
        if (ts.isMethodDeclaration(member)) members.add(member.name.text);
      }
      declared.set(statement.name.text, { kind: 'class', members });
    } else if (ts.isVariableStatement(statement)) {
      for (const d of statement.declarationList.declarations) declared.set(d.name.text, { kind: 'value' });
    }
    // Interfaces and type aliases exist only in the types.
  }
  const module = await import(pathToFileURL(join(packageDir, 'pushpull.js')));
  for (const [name, { kind, members }] of declared) {
    const value = module[name];
    if (value === undefined) {
      problems.push(`pushpull.d.ts declares ${kind} ${name}, which pushpull.js does not export`);
    } else if (kind !== 'value' && typeof value !== 'function') {
      problems.push(`pushpull.d.ts declares ${kind} ${name}, but pushpull.js exports a ${typeof value}`);
    }
    for (const member of members ?? []) {
      if (typeof value?.prototype?.[member] !== 'function') {
        problems.push(`pushpull.d.ts declares ${name}.${member}(), which pushpull.js's ${name} lacks`);
      }
    }
  }
  for (const name of Object.keys(module)) {
    if (!declared.has(name)) problems.push(`pushpull.js exports ${name}, which pushpull.d.ts does not declare`);
  }
  console.error(`check-types: ${declared.size} declared exports checked against the module`);
}

if (problems.length) {
  for (const problem of problems) console.error(problem);
  process.exit(1);
}
console.log('types ok');
